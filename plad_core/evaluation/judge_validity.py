"""The judge's validity check: cases whose answer is known, judged with the same prompt, judge, order
swap and debiasing as the systems, so that a report can say whether its win rates are evidence.

* TL;DR: for each judged dev row, the post's own human reference (known better) against the
  reference of another judged post, chosen by a seeded derangement (``eval.seed``) so that no post
  meets its own summary. A judge that reads the post prefers the summary of that post.
* HH: the human ``chosen`` reply (known better) against the human ``rejected`` one, on the judged dev
  rows that carry one (``plad_core.data``'s optional ``rejected`` field); a row without one (the
  helpful single-turn file has none) gets another judged dialogue's chosen reply, as for TL;DR.

``eval.judge.validity_rows`` caps the cases at the first N judged rows (0: all of them). The
verdicts are judgment rows with opponent ``judge_scores.VALIDITY`` and system ``judge_scores.KNOWN``;
``judge_scores.validity_summary`` turns them into the agreement with its CI.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from plad_core.evaluation.judge import JudgePrompt, Request, ordered_requests
from plad_core.evaluation.judge_scores import KNOWN, VALIDITY

CASE_COLUMNS = ["id", "known", "other", "other_source"]


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation of range(n) without fixed points (n >= 2): a random order of the items,
    each mapped to the next one in that order, the last to the first."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    out = [0] * n
    for i, item in enumerate(order):
        out[int(item)] = int(order[(i + 1) % n])
    return out


def validity_cases(dev: pd.DataFrame, ids: list[str], task: str, seed: int, rows: int = 0) -> pd.DataFrame:
    """The known-answer cases (``CASE_COLUMNS``) on the judged rows ``ids`` (the first ``rows`` of them;
    0: all): ``known`` the better candidate, ``other`` the worse one and ``other_source`` where it comes
    from (another row's id, or "rejected"). Cases whose two texts are equal are left out."""
    chosen = list(ids)[:rows] if rows > 0 else list(ids)
    by_id = dev.set_index("id")
    other = derangement(len(chosen), seed) if len(chosen) >= 2 else None
    cases = []
    for i, row_id in enumerate(chosen):
        rejected = by_id.at[row_id, "rejected"] if task == "hh" and "rejected" in by_id.columns else None
        rejected = rejected.strip() if isinstance(rejected, str) else ""
        if rejected and rejected != str(by_id.at[row_id, "reference"]).strip():
            cases.append((row_id, by_id.at[row_id, "reference"], rejected, "rejected"))
        elif other is not None:  # no human rejected reply: another judged row's reference, as for TL;DR
            cases.append((row_id, by_id.at[row_id, "reference"], by_id.at[chosen[other[i]], "reference"],
                          chosen[other[i]]))
    cases = [c for c in cases if str(c[1]).strip() != str(c[2]).strip()]
    return pd.DataFrame(cases, columns=CASE_COLUMNS)


def validity_requests(prompt: JudgePrompt, prefixes: dict[str, str], cases: pd.DataFrame) -> list[Request]:
    """Both orders of every case, on its row's prefix: the known answer in the system's place."""
    out: list[Request] = []
    for row_id, known, other in cases[["id", "known", "other"]].itertuples(index=False):
        out += ordered_requests(prompt, prefixes[row_id], row_id, KNOWN, VALIDITY, known, other)
    return out

