"""Likelihood-quality agreement: does a student's sequence likelihood track the quality of its own samples?

PLaD's claim is that calibration (the training stage) makes the student's length-normalised
log-likelihood log P̄(y|x) = (1/|y|) Σ_t log p(y_t | x, y_<t) track output quality. For K samples
y_1..y_K per dev prompt (scored by the same student, ``eval.calibration_samples`` in the stages) this
module measures that in two ways, both on plain numbers so they can be checked by hand:

* ranking: the Spearman correlation, within each prompt, between log P̄(y_k|x) and ROUGE-L(y_k),
  averaged over prompts (``prompt_spearman``);
* absolute: the expected calibration error of c = exp(log P̄) used as the probability that a
  sample beats its prompt's median sample (``expected_calibration_error``, ``reliability_bins``).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from plad_core.stats import bootstrap_ci


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span (as scipy's ``rankdata``)."""
    x = np.asarray(values, dtype=float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=float)
    sorted_x = x[order]
    start = 0
    while start < len(x):
        stop = start
        while stop + 1 < len(x) and sorted_x[stop + 1] == sorted_x[start]:
            stop += 1
        ranks[order[start:stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Spearman's rho: the Pearson correlation of the average ranks; None when x or y is constant
    (or shorter than 2), where the correlation is undefined."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs equal lengths, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denominator = float(np.sqrt((dx ** 2).sum() * (dy ** 2).sum()))
    if denominator == 0.0:
        return None
    return float((dx * dy).sum() / denominator)


def prompt_spearman(samples: pd.DataFrame, score: str = "logp_mean",
                    quality: str = "rougeL") -> tuple[list[float], int]:
    """Per-prompt Spearman rho between ``score`` and ``quality`` over each prompt's samples (rows with
    the same ``id``). Returns the rhos of the prompts where both vary, and how many prompts were
    skipped because one of the two is constant (identical samples, or all equally good)."""
    rhos, skipped = [], 0
    for _, group in samples.groupby("id", sort=True):
        rho = spearman(list(group[score]), list(group[quality]))
        if rho is None:
            skipped += 1
        else:
            rhos.append(rho)
    return rhos, skipped


def above_median(samples: pd.DataFrame, quality: str = "rougeL") -> pd.Series:
    """The binary outcome o_k = 1[q(y_k) > median_j q(y_j)], the median over the same prompt's samples
    (strictly above: with K=4 and no ties, two of the four samples of a prompt are positives)."""
    median = samples.groupby("id")[quality].transform("median")
    return (samples[quality] > median).astype(int)


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    return np.minimum((np.clip(confidence, 0.0, 1.0) * n_bins).astype(int), n_bins - 1)


def reliability_bins(confidence: Sequence[float], outcome: Sequence[int], n_bins: int = 10) -> list[dict[str, Any]]:
    """Equal-width bins [b/M, (b+1)/M) of the confidence (the last one closed at 1): for each, the
    count, mean confidence and observed frequency of the outcome (None for an empty bin)."""
    c, o = np.asarray(confidence, dtype=float), np.asarray(outcome, dtype=float)
    index = _bin_index(c, n_bins)
    bins = []
    for b in range(n_bins):
        inside = index == b
        count = int(inside.sum())
        bins.append({"low": b / n_bins, "high": (b + 1) / n_bins, "count": count,
                     "confidence": float(c[inside].mean()) if count else None,
                     "accuracy": float(o[inside].mean()) if count else None})
    return bins


def expected_calibration_error(confidence: Sequence[float], outcome: Sequence[int],
                               n_bins: int = 10) -> Optional[float]:
    """Expected calibration error (Naeini et al., 2015; Guo et al., 2017) with M equal-width bins:

        ECE = Σ_b (|B_b| / N) · | mean_{i∈B_b} o_i − mean_{i∈B_b} c_i |,   B_b = {i : c_i ∈ [b/M, (b+1)/M)}

    Here (see ``evaluate_likelihood_quality``) c_i = exp(log P̄(y_i|x)), the student's geometric-mean token
    probability of its own sample y_i, read as the probability of o_i = 1[ROUGE-L(y_i) > the median
    ROUGE-L of the K samples of the same prompt]. 0 is perfect; None for no samples.
    """
    c, o = np.asarray(confidence, dtype=float), np.asarray(outcome, dtype=float)
    if len(c) == 0:
        return None
    index = _bin_index(c, n_bins)
    total = 0.0
    for b in np.unique(index):
        inside = index == b
        total += inside.sum() / len(c) * abs(o[inside].mean() - c[inside].mean())
    return float(total)


def evaluate_likelihood_quality(samples: pd.DataFrame, n_bins: int = 10, n_resamples: int = 1000, seed: int = 0,
                         with_bins: bool = True) -> dict[str, Any]:
    """Likelihood-quality agreement of one student from its scored samples (columns ``id``, ``logp_mean``, ``rougeL``).

    * ``spearman``: mean over prompts of the within-prompt Spearman rho between log P̄ and ROUGE-L,
      with a bootstrap CI over prompts (``spearman_low``/``_high``); prompts where either is
      constant are skipped and counted (``prompts_skipped``).
    * ``ece``: ``expected_calibration_error`` of c = exp(log P̄) against o = above the prompt's
      median sample ROUGE-L, over the samples of prompts whose K ROUGE-L values are not all equal
      (for the others o is 0 by construction and says nothing about the student); ``ece_samples``
      counts them, ``mean_confidence`` and ``outcome_rate`` give mean c and mean o, and ``bins`` the
      reliability diagram's points.
    """
    rhos, skipped = prompt_spearman(samples)
    out: dict[str, Any] = {"prompts": int(samples["id"].nunique()), "samples": len(samples),
                           "prompts_used": len(rhos), "prompts_skipped": skipped}
    if rhos:
        ci = bootstrap_ci(rhos, n_resamples, seed)
        out.update(spearman=round(ci.estimate, 4), spearman_low=round(ci.low, 4), spearman_high=round(ci.high, 4))
    else:
        out.update(spearman=None, spearman_low=None, spearman_high=None)
    varies = samples.groupby("id")["rougeL"].transform(lambda q: q.nunique() > 1).astype(bool)
    used = samples[varies]
    confidence = np.exp(used["logp_mean"].to_numpy(dtype=float))
    outcome = above_median(used).to_numpy() if len(used) else np.zeros(0)
    ece = expected_calibration_error(confidence, outcome, n_bins)
    out.update(ece=None if ece is None else round(ece, 4), ece_samples=len(used),
               mean_confidence=round(float(confidence.mean()), 4) if len(used) else None,
               outcome_rate=round(float(outcome.mean()), 4) if len(used) else None)
    if with_bins:
        out["bins"] = reliability_bins(confidence, outcome, n_bins)
    return out
