# shim: removed after the layout merge
from plad_core.experiments.scale import (ScaleExperiment, load_experiment, run_overrides, run_scale,  # noqa: F401
                                         scale_point)
