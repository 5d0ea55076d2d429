"""ROUGE F1 (rouge-score's implementation, with one shared ``RougeScorer``): the evaluation metric of
generated outputs, and the quality score s of the PLaD margin loss.

rouge-score and pandas are imported on first use: training imports this module, and its torch-only
paths (``bench/train.py --mfu``) need neither.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    import pandas as pd
    from rouge_score.rouge_scorer import RougeScorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@functools.lru_cache(maxsize=None)
def _scorer(use_stemmer: bool) -> RougeScorer:
    """The one ``RougeScorer`` of ``ROUGE_TYPES`` (each type is scored on its own, so a caller reading only
    rougeL gets the value a rougeL-only scorer gives)."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)


def rouge_f1(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = True) -> pd.DataFrame:
    """Per-row ROUGE-1/2/L F1 (rouge-score's implementation), as fractions in [0, 1]."""
    import pandas as pd

    scorer = _scorer(use_stemmer)
    rows = []
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)
        rows.append({name: scores[name].fmeasure for name in ROUGE_TYPES})
    return pd.DataFrame(rows, columns=list(ROUGE_TYPES))


def rouge_l_scores(chosen: Sequence[str], rejected: Sequence[str],
                   references: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Default quality score s for ``margin_calibration_loss``: ROUGE-L F1 (rouge-score, with stemming) of each
    output against the row's human reference, or against the teacher output y_T where the row has none
    (then s(y_T) = 1).

    Args:
        chosen, rejected: B texts, y_T and y_S.
        references: B human references; None, NaN or an empty string where the row has none.
    Returns:
        (B,) float32 s(y_T) and (B,) float32 s(y_S).
    """
    scorer = _scorer(True)
    chosen_scores, rejected_scores = [], []
    for teacher, student, reference in zip(chosen, rejected, references, strict=True):
        target = reference if isinstance(reference, str) and reference.strip() else teacher
        chosen_scores.append(scorer.score(target, teacher)["rougeL"].fmeasure)
        rejected_scores.append(scorer.score(target, student)["rougeL"].fmeasure)
    # rouge-score returns the int 0 for a text without tokens (e.g. only punctuation): float32 always
    return (torch.tensor(chosen_scores, dtype=torch.float32), torch.tensor(rejected_scores, dtype=torch.float32))
