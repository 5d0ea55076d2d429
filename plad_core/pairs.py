"""Pseudo-preference pairs: the teacher's output is chosen, the student's own output rejected.

PLaD assumes y_T ≻ y_S for every prompt because of the teacher-student capacity gap, so no
labels or teacher internals are needed, only the two texts. It also assumes complete outputs: a text
cut at ``max_new_tokens`` (``finish_reason`` "length") is a worse y_T, and a cut y_S makes the pair
trivially easy, so ``pairs.truncated`` drops such pairs by default (``keep``: they stay, and training
scores a cut side without the EOS its model never produced).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pyarrow as pa

PAIRS_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),             # prompt id (data row id)
    pa.field("sample_index", pa.int32(), nullable=False),    # which of the n samples per prompt
    pa.field("prompt", pa.string(), nullable=False),         # the student's prompt x (what training conditions on)
    pa.field("chosen", pa.string(), nullable=False),         # y_T, teacher text
    pa.field("rejected", pa.string(), nullable=False),       # y_S, student text
    pa.field("reference", pa.string()),                      # human summary when the row has one
    pa.field("teacher_model", pa.string(), nullable=False),
    pa.field("student_model", pa.string(), nullable=False),
    pa.field("prompt_tokens", pa.int32(), nullable=False),   # student prompt tokens
    pa.field("chosen_tokens", pa.int32(), nullable=False),
    pa.field("rejected_tokens", pa.int32(), nullable=False),
    pa.field("teacher_temperature", pa.float32(), nullable=False),
    pa.field("teacher_top_p", pa.float32(), nullable=False),
    pa.field("teacher_seed", pa.int64(), nullable=False),
    pa.field("student_temperature", pa.float32(), nullable=False),
    pa.field("student_top_p", pa.float32(), nullable=False),
    pa.field("student_seed", pa.int64(), nullable=False),
    pa.field("chosen_finish_reason", pa.string(), nullable=False),    # "stop" or "length" (cut at max_new_tokens)
    pa.field("rejected_finish_reason", pa.string(), nullable=False),
])

TRUNCATED = ("drop", "keep")  # pairs.truncated: what build_pairs does with a pair whose y_T or y_S was cut


def prompts_used(fraction: float, n: int) -> int:
    """How many of n unlabeled prompts ``pairs.unlabeled_fraction`` keeps: ceil(fraction * n), rounded
    first so that float error cannot add one (0.1 * 30 is 3.0000000000000004 in floating point)."""
    return math.ceil(round(fraction * n, 6))


def build_pairs(teacher: pd.DataFrame, student: pd.DataFrame, references: dict[str, str],
                min_chars: int = 1, truncated: str = "drop") -> tuple[pd.DataFrame, dict[str, Any]]:
    """Join teacher and student samples on (id, sample_index) into pairs.

    Dropped and counted: prompts missing on one side, pairs whose chosen or rejected text is
    shorter than ``min_chars`` after stripping, pairs whose two texts are identical, and, when
    ``truncated`` is "drop", pairs with a side cut at max_new_tokens (``truncated_stats``).
    """
    if truncated not in TRUNCATED:
        raise ValueError(f"pairs.truncated must be one of {TRUNCATED}, not '{truncated}'")
    merged = teacher.merge(student, on=["id", "sample_index"], how="inner", suffixes=("_t", "_s"))
    stats: dict[str, Any] = {
        "teacher_rows": len(teacher), "student_rows": len(student),
        "dropped_unmatched": len(teacher) + len(student) - 2 * len(merged),
    }
    chosen, rejected = merged["text_t"].str.strip(), merged["text_s"].str.strip()
    empty = (chosen.str.len() < min_chars) | (rejected.str.len() < min_chars)
    identical = ~empty & (chosen == rejected)
    stats["dropped_empty"] = int(empty.sum())
    stats["dropped_identical"] = int(identical.sum())
    cut_t, cut_s = merged["finish_reason_t"] == "length", merged["finish_reason_s"] == "length"
    valid = ~empty & ~identical
    stats["truncated"] = truncated_stats(cut_t[valid], cut_s[valid], truncated)
    stats["dropped_truncated"] = stats["truncated"]["pairs"]["dropped"]
    kept = merged[valid & ~(cut_t | cut_s)] if truncated == "drop" else merged[valid]
    pairs = pd.DataFrame({
        "id": kept["id"], "sample_index": kept["sample_index"], "prompt": kept["prompt_s"],
        "chosen": chosen[kept.index], "rejected": rejected[kept.index],
        "reference": kept["id"].map(references),
        "teacher_model": kept["model_t"], "student_model": kept["model_s"],
        "prompt_tokens": kept["prompt_tokens_s"],
        "chosen_tokens": kept["output_tokens_t"], "rejected_tokens": kept["output_tokens_s"],
        "teacher_temperature": kept["temperature_t"], "teacher_top_p": kept["top_p_t"], "teacher_seed": kept["seed_t"],
        "student_temperature": kept["temperature_s"], "student_top_p": kept["top_p_s"], "student_seed": kept["seed_s"],
        "chosen_finish_reason": kept["finish_reason_t"], "rejected_finish_reason": kept["finish_reason_s"],
    }).sort_values(["id", "sample_index"]).reset_index(drop=True)
    stats["pairs"] = len(pairs)
    return pairs, stats


def truncated_stats(cut_chosen: pd.Series, cut_rejected: pd.Series, policy: str) -> dict[str, Any]:
    """The manifest's count of pairs (among those not dropped as empty or identical) with a side cut at
    max_new_tokens: per side (a pair with both cut counts on both), how many of them were dropped or kept."""
    fate = "dropped" if policy == "drop" else "kept"
    either = cut_chosen | cut_rejected
    return {"policy": policy,
            "chosen": {"dropped": 0, "kept": 0, fate: int(cut_chosen.sum())},
            "rejected": {"dropped": 0, "kept": 0, fate: int(cut_rejected.sum())},
            "pairs": {"dropped": 0, "kept": 0, fate: int(either.sum())}}
