import numpy as np
import pytest

from plad_core.stats import bootstrap_ci, min_detectable_difference, paired_bootstrap


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


def test_min_detectable_difference_by_hand_in_float64():
    d = np.array([0.10, -0.05, 0.20, 0.00, 0.15, -0.10, 0.05, 0.30], dtype=np.float64)
    mean = d.sum() / len(d)
    sd = np.sqrt(((d - mean) ** 2).sum() / (len(d) - 1))
    z = 1.959963984540054 + 0.8416212335729143  # standard normal quantiles 0.975 and 0.8 (statistical tables)
    assert min_detectable_difference(d) == pytest.approx(z * sd / np.sqrt(len(d)), rel=1e-12)
    assert min_detectable_difference([0.3]) is None and min_detectable_difference([]) is None
    assert min_detectable_difference([0.2] * 5) == 0.0


def test_a_true_shift_of_the_mde_is_detected_about_80_percent_of_the_time():
    """Seeded simulation: n = 32 rows whose per-row difference has sd 0.1 and a true mean equal to the
    MDE at that sd; the paired bootstrap's 95% CI excludes zero in ≈ 80% of draws."""
    rng, n, sigma, draws = np.random.default_rng(7), 32, 0.1, 300
    shift = (1.959963984540054 + 0.8416212335729143) * sigma / np.sqrt(n)
    detected, estimates = 0, []
    for i in range(draws):
        d = rng.normal(shift, sigma, n)
        estimates.append(min_detectable_difference(d))
        ci = paired_bootstrap(d, np.zeros(n), n_resamples=400, seed=i).difference
        detected += ci.low > 0 or ci.high < 0
    assert 0.70 <= detected / draws <= 0.90
    assert np.mean(estimates) == pytest.approx(shift, rel=0.05)  # the sample sd estimates sigma
