# shim: removed after the layout merge
from plad_core.training.batches import (STORED_COLUMNS, encode_pair, encode_pairs, pair_batches,  # noqa: F401
                                        scored_tokens, split_held_out)
from plad_core.training.calibrate import train_on_pairs  # noqa: F401
