"""ROUGE evaluation of generated outputs against human references, with bootstrap CIs, the paired
PLaD-vs-SFT test, the students' likelihood-quality agreement, the judge's win rates and every metric by
reference-length bucket; and the perplexity of a model on held-out texts."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from plad_core.evaluation.judge import win_rates
from plad_core.evaluation.likelihood_quality import evaluate_likelihood_quality
from plad_core.rouge import ROUGE_TYPES
from plad_core.stats import bootstrap_ci, min_detectable_difference, paired_bootstrap
from plad_core.text_stats import repeated_ngram_share  # noqa: F401  (eval_lib.repeated_ngram_share)

# --- Uncertainty, comparisons and length buckets (metrics.json) ---------------------------------

def _with_ci(name: str, values: Sequence[float], n_resamples: int, seed: int, scale: float) -> dict[str, Any]:
    if len(values) == 0:
        return {name: None, f"{name}_low": None, f"{name}_high": None}
    ci = bootstrap_ci(values, n_resamples, seed)
    return {name: round(scale * ci.estimate, 2), f"{name}_low": round(scale * ci.low, 2),
            f"{name}_high": round(scale * ci.high, 2)}


def system_summary(frame: pd.DataFrame, n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Mean ROUGE-1/2/L F1 (x100) and mean output tokens of one system's per-row scores, each with its
    95% percentile-bootstrap CI over rows (``<name>_low``, ``<name>_high``), and the row count ``n``."""
    out: dict[str, Any] = {}
    for name in ROUGE_TYPES:
        out.update(_with_ci(name, list(frame[name]), n_resamples, seed, 100.0))
    tokens = _with_ci("mean_output_tokens", list(frame["output_tokens"]), n_resamples, seed, 1.0)
    out.update(tokens)
    out["n"] = len(frame)
    return out


def paired_comparison(a: pd.DataFrame, b: pd.DataFrame, metric: str = "rougeL", n_resamples: int = 1000,
                      seed: int = 0) -> Optional[dict[str, Any]]:
    """Mean per-row difference a − b in ``metric`` (x100) over the rows both scored, with its paired
    bootstrap 95% CI and two-sided p-value (``plad_core.stats.paired_bootstrap``), the row count ``n`` and
    ``mde``: the smallest true difference (x100) this comparison detects with 80% power at α = 0.05
    (``plad_core.stats.min_detectable_difference``; None below two rows); None for no rows."""
    joined = a[["id", metric]].merge(b[["id", metric]], on="id", suffixes=("_a", "_b")).sort_values("id")
    if joined.empty:
        return None
    result = paired_bootstrap(list(joined[f"{metric}_a"]), list(joined[f"{metric}_b"]), n_resamples, seed)
    d = result.difference
    mde = min_detectable_difference(joined[f"{metric}_a"].to_numpy(float) - joined[f"{metric}_b"].to_numpy(float))
    return {"metric": metric, "difference": round(100 * d.estimate, 2), "low": round(100 * d.low, 2),
            "high": round(100 * d.high, 2), "p_value": round(result.p_value, 4), "n": len(joined),
            "mde": None if mde is None else round(100 * mde, 2)}


def reference_words(references: Sequence[str]) -> list[int]:
    """Reference length in whitespace-separated words (the unit of ``eval.length_buckets``)."""
    return [len(str(r).split()) for r in references]


def default_length_edges(words: Sequence[int]) -> list[int]:
    """The default bucket edges: the floor of the 33.3rd and 66.7th percentiles (numpy's linear
    interpolation) of the dev references' word counts, duplicates removed. Three buckets of about a
    third of the rows each; the median/mean split leaves the middle bucket nearly empty on TL;DR,
    whose dev median and mean differ by under a word (26 and 26.7 words on the demo's 32 rows)."""
    if len(words) == 0:
        return []
    return sorted({int(np.floor(np.percentile(words, q))) for q in (100 / 3, 200 / 3)})


def assign_buckets(words: Sequence[int], edges: Sequence[int]) -> list[int]:
    """Bucket index of each length: 0 for words <= edges[0], i for edges[i-1] < words <= edges[i],
    len(edges) for words > edges[-1]."""
    if list(edges) != sorted(set(edges)):
        raise ValueError(f"eval.length_buckets must be strictly increasing, got {list(edges)}")
    return [int(np.searchsorted(np.asarray(edges), w, side="left")) for w in words]


def bucket_ranges(edges: Sequence[int]) -> list[tuple[Optional[int], Optional[int]]]:
    """(min_words, max_words) of each bucket, None where it is open."""
    bounds: list[Optional[int]] = [None, *edges, None]
    return [(None if lo is None else lo + 1, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]


def bucket_label(low: Optional[int], high: Optional[int]) -> str:
    if low is None and high is None:
        return "all"
    if low is None:
        return f"≤{high} words"
    if high is None:
        return f">{low - 1} words"
    return f"{low}–{high} words" if low != high else f"{low} words"


def subset_metrics(generations: pd.DataFrame, samples: pd.DataFrame, judgments: Optional[pd.DataFrame], ids: set[str],
                   n_resamples: int, seed: int, n_bins: int, with_bins: bool) -> dict[str, Any]:
    """Every metric on the rows ``ids``: per-system ROUGE and length with CIs, PLaD vs SFT, calibration,
    judge win rates (empty when ``judgments`` is None or holds none of these rows)."""
    rows = generations[generations["id"].isin(ids)]
    systems = {s: system_summary(rows[rows["system"] == s], n_resamples, seed)
               for s in generations["system"].unique()}
    paired = {}
    if {"plad", "sft"} <= set(systems):
        paired["plad_vs_sft"] = paired_comparison(rows[rows["system"] == "plad"], rows[rows["system"] == "sft"],
                                                  "rougeL", n_resamples, seed)
    calibration = {}
    for s in samples["system"].unique() if len(samples) else []:
        mine = samples[(samples["system"] == s) & samples["id"].isin(ids)]
        calibration[s] = evaluate_likelihood_quality(mine, n_bins, n_resamples, seed, with_bins)
    judged = judgments[judgments["id"].isin(ids)] if judgments is not None else None
    judge = win_rates(judged, n_resamples, seed) if judged is not None and len(judged) else {}
    return {"systems": systems, "paired": paired, "calibration": calibration, "judge": judge}


def evaluation_metrics(generations: pd.DataFrame, references: pd.DataFrame, samples: pd.DataFrame,
                       edges: Sequence[int] = (), n_resamples: int = 1000, seed: int = 0,
                       n_bins: int = 10, judgments: Optional[pd.DataFrame] = None) -> dict[str, Any]:
    """The content of metrics.json.

    Args:
        generations: one greedy output per system and dev row: system, id, rouge1/2/L (fractions), output_tokens.
        references: the dev rows: id, reference.
        samples: the students' scored samples (system, id, sample_index, logp_mean, rougeL); may be empty.
        edges: ``eval.length_buckets``; empty: ``default_length_edges`` of the references.
        judgments: the judge's verdicts (``plad_core.evaluation.judge.judge_systems``), or None without a judge.
    Returns:
        {"settings", "systems", "paired", "calibration", "judge", "length_buckets"}: ``judge`` holds
        ``plad_core.evaluation.judge.win_rates`` ({} without judgments); ``length_buckets`` the edges, how they
        were chosen and, per bucket, its word range, row count and the same four blocks.
    """
    words = reference_words(list(references["reference"]))
    rule = "eval.length_buckets" if edges else "default: dev reference tertiles (floor of 33.3rd/66.7th percentiles)"
    edges = list(edges) if edges else default_length_edges(words)
    index = assign_buckets(words, edges)
    ids = list(references["id"])
    metrics: dict[str, Any] = {
        "settings": {"n_resamples": n_resamples, "seed": seed, "level": 0.95, "calibration_bins": n_bins,
                     "rouge_scale": "F1 x 100", "dev_rows": len(ids)},
        **subset_metrics(generations, samples, judgments, set(ids), n_resamples, seed, n_bins, with_bins=True)}
    buckets = []
    for b, (low, high) in enumerate(bucket_ranges(edges)):
        members = {i for i, k in zip(ids, index) if k == b}
        buckets.append({"name": bucket_label(low, high), "min_words": low, "max_words": high, "n": len(members),
                        **subset_metrics(generations, samples, judgments, members, n_resamples, seed, n_bins,
                                         with_bins=False)})
    metrics["length_buckets"] = {"edges": edges, "rule": rule, "unit": "reference words", "buckets": buckets}
    return metrics
