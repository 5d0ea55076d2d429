# shim: removed after the layout merge
from plad_core.training.batches import collate_pair_parts  # noqa: F401
from plad_core.training.logprobs import shared_prefix_logprobs  # noqa: F401
