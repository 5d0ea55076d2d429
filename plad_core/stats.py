"""Seeded bootstrap statistics for headline numbers and system comparisons, and the smallest
difference a paired comparison of n items can resolve (its power)."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


def bootstrap_ci(values: Sequence[float], n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> Interval:
    """Mean of ``values`` with a percentile bootstrap confidence interval."""
    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_resamples, len(x)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    return Interval(float(x.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail)))


@dataclass(frozen=True)
class PairedComparison:
    difference: Interval   # mean of a - b, with its bootstrap CI
    p_value: float         # two-sided paired-bootstrap p-value for "no difference"


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_resamples: int = 1000, seed: int = 0,
                     level: float = 0.95) -> PairedComparison:
    """Compare two systems scored on the same items: resample items, keep the pairing."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired scores need equal lengths, got {len(x)} and {len(y)}")
    diff = x - y
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_resamples, len(diff)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    p = min(1.0, 2 * min((means <= 0).mean(), (means >= 0).mean()))
    return PairedComparison(Interval(float(diff.mean()), float(np.percentile(means, tail)),
                                     float(np.percentile(means, 100 - tail))), float(p))


def min_detectable_difference(differences: Sequence[float], alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest true mean difference a paired comparison of these items detects with probability
    ``power`` at two-sided level ``alpha``: MDE = (z_{1-α/2} + z_{power}) · sd(d) / √n (the normal
    approximation of a paired test's power; ≈ 2.80 · sd / √n at the defaults), with sd(d) the sample
    standard deviation (ddof 1) of the per-item differences d. A true difference smaller than this is
    more likely than not to give a CI that includes zero. None for fewer than two items."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return None
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return float(z * d.std(ddof=1) / np.sqrt(len(d)))
