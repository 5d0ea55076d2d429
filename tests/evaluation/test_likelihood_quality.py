"""Likelihood-quality agreement (Spearman of log P̄ vs ROUGE-L, ECE, reliability bins) against hand-computed values."""

import math

import numpy as np
import pandas as pd
import pytest

from plad_core.evaluation.likelihood_quality import (
    above_median,
    average_ranks,
    evaluate_likelihood_quality,
    expected_calibration_error,
    prompt_spearman,
    reliability_bins,
    spearman,
)


def test_average_ranks_and_spearman_by_hand():
    assert list(average_ranks([10, 30, 20, 20])) == [1.0, 4.0, 2.5, 2.5]
    # no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 60 = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties: ranks [1, 2.5, 2.5, 4] vs [1, 2, 3, 4]: cov 4.5, var 4.5 and 5 -> rho = sqrt(0.9)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9))
    assert spearman([4, 3, 2, 1], [1, 2, 3, 4]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1], [2]) is None
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, 12), rng.normal(size=12)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


def test_prompt_spearman_skips_and_counts_constant_prompts():
    samples = pd.DataFrame({
        "id": ["a"] * 4 + ["b"] * 4 + ["c"] * 4,
        "logp_mean": [-1, -2, -3, -4, -1, -2, -3, -4, -1, -1, -1, -1],
        "rougeL": [0.4, 0.3, 0.2, 0.1, 0.1, 0.3, 0.2, 0.4, 0.1, 0.2, 0.3, 0.4]})
    rhos, skipped = prompt_spearman(samples)
    assert rhos == pytest.approx([1.0, -0.8]) and skipped == 1  # c: constant log-likelihood


def test_ece_and_reliability_bins_by_hand():
    confidence, outcome = [0.05, 0.15, 0.12, 0.95], [0, 1, 0, 1]
    # bin 0: {0.05} rate 0 conf 0.05; bin 1: {0.15, 0.12} rate 0.5 conf 0.135; bin 9: {0.95} rate 1 conf 0.95
    # ECE = 1/4 * 0.05 + 2/4 * 0.365 + 1/4 * 0.05 = 0.2075
    assert expected_calibration_error(confidence, outcome, 10) == pytest.approx(0.2075)
    bins = reliability_bins(confidence, outcome, 10)
    assert [b["count"] for b in bins] == [1, 1 + 1, 0, 0, 0, 0, 0, 0, 0, 1]
    assert bins[1]["confidence"] == pytest.approx(0.135) and bins[1]["accuracy"] == 0.5
    assert bins[2]["accuracy"] is None
    assert expected_calibration_error([1.0, 0.0], [1, 0], 10) == 0.0  # 1.0 falls in the last, closed bin
    assert expected_calibration_error([0.3, 0.3], [1, 1], 1) == pytest.approx(0.7)
    assert expected_calibration_error([], [], 10) is None


def test_above_median_is_strict_within_each_prompt():
    samples = pd.DataFrame({"id": ["a"] * 4 + ["b"] * 4,
                            "rougeL": [0.1, 0.2, 0.3, 0.4, 0.2, 0.2, 0.2, 0.5]})
    assert list(above_median(samples)) == [0, 0, 1, 1, 0, 0, 0, 1]  # medians 0.25 and 0.2


def test_evaluate_likelihood_quality_on_a_tiny_example():
    samples = pd.DataFrame({
        "id": ["a"] * 4 + ["b"] * 4,
        "logp_mean": np.log([0.9, 0.7, 0.3, 0.1, 0.5, 0.5, 0.5, 0.5]),
        "rougeL": [0.4, 0.3, 0.2, 0.1, 0.3, 0.3, 0.3, 0.3]})  # b: all samples equally good
    c = evaluate_likelihood_quality(samples, n_bins=10, n_resamples=200, seed=0)
    assert (c["spearman"], c["prompts_used"], c["prompts_skipped"]) == (1.0, 1, 1)
    # ECE on prompt a only: confidences 0.9, 0.7, 0.3, 0.1 -> outcomes 1, 1, 0, 0, one per bin:
    # (0.1 + 0.3 + 0.3 + 0.1) / 4 = 0.2
    assert c["ece"] == pytest.approx(0.2) and c["ece_samples"] == 4
    assert c["outcome_rate"] == 0.5 and c["mean_confidence"] == pytest.approx(0.5)
    assert sum(b["count"] for b in c["bins"]) == 4


