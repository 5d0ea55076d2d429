import numpy as np
import pytest

from plad_core.stats import bootstrap_ci, paired_bootstrap


def test_ci_contains_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.3, 1.0, 50), rng.normal(0.3, 1.0, 2000)
    ci_small, ci_large = bootstrap_ci(small), bootstrap_ci(large)
    assert ci_small.low <= ci_small.estimate <= ci_small.high
    assert ci_small.estimate == pytest.approx(small.mean())
    assert (ci_large.high - ci_large.low) < (ci_small.high - ci_small.low) / 4
    assert bootstrap_ci(small) == ci_small   # seeded


def test_paired_bootstrap_detects_a_consistent_gain_and_not_noise():
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 1, 200)
    better = paired_bootstrap(base + 0.05, base)
    assert better.difference.estimate == pytest.approx(0.05)
    assert better.difference.low > 0 and better.p_value < 0.01
    noise = paired_bootstrap(base + rng.normal(0, 0.1, 200), base + rng.normal(0, 0.1, 200))
    assert noise.difference.low < 0 < noise.difference.high and noise.p_value > 0.05
    with pytest.raises(ValueError, match="equal lengths"):
        paired_bootstrap([1.0], [1.0, 2.0])
