# shim: removed after the layout merge
from plad_core.experiments.table import (FIXED, PLAD_LOSSES, Run, TableExperiment, TableSystem, Tuning,  # noqa: F401
                                         check_experiment, load_experiment, run_overrides, tuning_experiment)
from plad_core.experiments.table_results import (judge_win_rates, pair_accuracy, pair_quality, seed_mean,  # noqa: F401
                                                 table_results, training_summary)
from plad_core.experiments.table_run import STEPS, run_plain, run_table  # noqa: F401
