# shim: removed after the layout merge
from plad_core.evaluation.likelihood_quality import (above_median, average_ranks,  # noqa: F401
                                                     expected_calibration_error, prompt_spearman, reliability_bins,
                                                     spearman)
from plad_core.evaluation.likelihood_quality import evaluate_likelihood_quality as evaluate_calibration  # noqa: F401
