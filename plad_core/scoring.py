# shim: removed after the layout merge
from plad_core.training.reference_scores import SCORERS, SCORES_SCHEMA, score_pairs, sequence_scores  # noqa: F401
