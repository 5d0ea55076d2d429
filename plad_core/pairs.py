"""Pseudo-preference pairs: the teacher's output is chosen, the student's own output rejected.

PLaD assumes y_T ≻ y_S for every prompt because of the teacher-student capacity gap, so no
labels or teacher internals are needed, only the two texts.
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
])


def prompts_used(fraction: float, n: int) -> int:
    """How many of n unlabeled prompts ``pairs.unlabeled_fraction`` keeps: ceil(fraction * n), rounded
    first so that float error cannot add one (0.1 * 30 is 3.0000000000000004 in floating point)."""
    return math.ceil(round(fraction * n, 6))


def build_pairs(teacher: pd.DataFrame, student: pd.DataFrame, references: dict[str, str],
                min_chars: int = 1) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Join teacher and student samples on (id, sample_index) into pairs.

    Dropped and counted: prompts missing on one side, pairs whose chosen or rejected text is
    shorter than ``min_chars`` after stripping, and pairs whose two texts are identical.
    """
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
    kept = merged[~empty & ~identical]
    pairs = pd.DataFrame({
        "id": kept["id"], "sample_index": kept["sample_index"], "prompt": kept["prompt_s"],
        "chosen": chosen[kept.index], "rejected": rejected[kept.index],
        "reference": kept["id"].map(references),
        "teacher_model": kept["model_t"], "student_model": kept["model_s"],
        "prompt_tokens": kept["prompt_tokens_s"],
        "chosen_tokens": kept["output_tokens_t"], "rejected_tokens": kept["output_tokens_s"],
        "teacher_temperature": kept["temperature_t"], "teacher_top_p": kept["top_p_t"], "teacher_seed": kept["seed_t"],
        "student_temperature": kept["temperature_s"], "student_top_p": kept["top_p_s"], "student_seed": kept["seed_s"],
    }).sort_values(["id", "sample_index"]).reset_index(drop=True)
    stats["pairs"] = len(pairs)
    return pairs, stats
