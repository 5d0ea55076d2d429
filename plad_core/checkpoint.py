# shim: removed after the layout merge
from plad_core.training.checkpoint import (BEST, FORMAT, LAST, load_best, load_last, rng_state,  # noqa: F401
                                           save_atomic, save_best, save_last, set_rng_state)
