"""ROUGE evaluation of generated summaries against human references."""

from __future__ import annotations

import math
from typing import Any, Sequence

import pandas as pd
from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge_f1(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = True) -> pd.DataFrame:
    """Per-row ROUGE-1/2/L F1 (rouge-score's implementation), as fractions in [0, 1]."""
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    rows = []
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)
        rows.append({name: scores[name].fmeasure for name in ROUGE_TYPES})
    return pd.DataFrame(rows, columns=list(ROUGE_TYPES))


def summarize_system(scores: pd.DataFrame, output_tokens: Sequence[int]) -> dict[str, Any]:
    """Mean ROUGE F1 (x100) and mean output length for one system."""
    out = {name: round(100 * float(scores[name].mean()), 2) for name in ROUGE_TYPES}
    out["mean_output_tokens"] = round(sum(output_tokens) / max(len(output_tokens), 1), 2)
    out["n"] = len(scores)
    return out


def results_table(metrics: dict[str, dict[str, Any]]) -> str:
    """Markdown table: one row per system."""
    lines = ["| system | ROUGE-1 | ROUGE-2 | ROUGE-L | mean tokens | n |", "|---|---:|---:|---:|---:|---:|"]
    for system, m in metrics.items():
        lines.append(f"| {system} | {m['rouge1']:.2f} | {m['rouge2']:.2f} | {m['rougeL']:.2f} "
                     f"| {m['mean_output_tokens']:.1f} | {m['n']} |")
    return "\n".join(lines)


def all_finite(metrics: dict[str, dict[str, Any]]) -> bool:
    return all(math.isfinite(float(v)) for m in metrics.values() for v in m.values())
