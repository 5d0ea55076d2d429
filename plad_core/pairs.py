"""Pseudo-preference pairs: the teacher's output is chosen, the student's own output rejected.

PLaD assumes y_T ≻ y_S for every prompt because of the teacher-student capacity gap, so no
labels or teacher internals are needed, only the two texts. It also assumes complete outputs: a text
cut at ``max_new_tokens`` (``finish_reason`` "length") is a worse y_T, and a cut y_S makes the pair
trivially easy, so ``pairs.truncated`` drops such pairs by default (``keep``: they stay, and training
scores a cut side without the EOS its model never produced).

Unlabeled means unlabeled: in PLaD's setting the prompts that yield pairs have no human label, so a
pair's ``reference`` is null unless ``pairs.references`` is true (the opt-in "labeled-pair" setting for
users whose unlabeled rows do carry references; not PLaD's setting, and it hands PLaD-margin labels its
baselines never see). ``curate_pairs`` then drops pairs that teach the student the wrong thing.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pyarrow as pa

from plad_core.text_stats import repeated_ngram_share

PAIRS_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),             # prompt id (data row id)
    pa.field("sample_index", pa.int32(), nullable=False),    # which of the n samples per prompt
    pa.field("prompt", pa.string(), nullable=False),         # the student's prompt x (what training conditions on)
    pa.field("chosen", pa.string(), nullable=False),         # y_T, teacher text
    pa.field("rejected", pa.string(), nullable=False),       # y_S, student text
    pa.field("reference", pa.string()),                      # null unless pairs.references (the row's human summary)
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


def build_pairs(teacher: pd.DataFrame, student: pd.DataFrame, references: dict[str, str] | None,
                min_chars: int = 1, truncated: str = "drop") -> tuple[pd.DataFrame, dict[str, Any]]:
    """Join teacher and student samples on (id, sample_index) into pairs; ``reference`` is the id's entry of
    ``references``, or null for every pair when ``references`` is None (``pairs.references`` false).

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
        "reference": (kept["id"].map(references) if references is not None
                      else pd.Series([None] * len(kept), index=kept.index, dtype=object)),
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


CURATION_REASONS = ("degenerate", "student_agrees")  # in the order a pair is tested; it is dropped for the first
DROPPED_SCHEMA = PAIRS_SCHEMA.append(pa.field("reason", pa.string(), nullable=False)).append(
    pa.field("chosen_repeat_share", pa.float64(), nullable=False)).append(
    pa.field("student_gap", pa.float64()))  # log P̄(y_T) - log P̄(y_S) under the SFT student, where computed


def _mean(values: pd.Series) -> float | None:
    return round(float(values.mean()), 4) if len(values) else None


def curate_pairs(pairs: pd.DataFrame, max_repeat_share: float, student_gap: pd.Series | None = None,
                 student_margin: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """(kept pairs, dropped pairs with their ``reason``, stats): the pairs that teach the wrong thing, dropped.

    ``degenerate``: y_T's ``repeated_ngram_share`` (word 3-grams) is above ``max_repeat_share``; a looping
    teacher text as "chosen" teaches the loop. ``student_agrees`` (only when ``student_margin`` is set):
    the SFT student already ranks the pair right by more than the margin, ``student_gap`` = log P̄(y_T) −
    log P̄(y_S) > ``student_margin`` (nats per token), so the ranking loss has nothing left to teach on it.
    A pair is dropped for the first reason of ``CURATION_REASONS`` it meets (each is counted once).
    Stats: pairs built, dropped per reason, kept, and the mean repeat share of y_T and y_S before and after.
    """
    if student_margin is not None and len(pairs) and (student_gap is None or len(student_gap) != len(pairs)):
        raise ValueError("curate_pairs: pairs.curate.student_margin is set but no student_gap per pair was given")
    pairs = pairs.reset_index(drop=True)
    chosen_share = pairs["chosen"].map(repeated_ngram_share).astype("float64")
    rejected_share = pairs["rejected"].map(repeated_ngram_share).astype("float64")
    reason = pd.Series([None] * len(pairs), dtype=object)
    reason[chosen_share > max_repeat_share] = "degenerate"
    gap = (pd.Series(student_gap, dtype="float64").reset_index(drop=True) if student_gap is not None
           else pd.Series([float("nan")] * len(pairs), dtype="float64"))
    if student_margin is not None:
        reason[reason.isna() & (gap > student_margin)] = "student_agrees"
    keep = reason.isna()
    kept = pairs[keep].reset_index(drop=True)
    dropped = pairs[~keep].assign(reason=reason[~keep], chosen_repeat_share=chosen_share[~keep],
                                  student_gap=gap[~keep]).reset_index(drop=True)
    active = [r for r in CURATION_REASONS if r != "student_agrees" or student_margin is not None]
    stats = {"built": len(pairs), "dropped": {r: int((reason == r).sum()) for r in active}, "kept": len(kept),
             "repeat_share": {"before": {"chosen": _mean(chosen_share), "rejected": _mean(rejected_share)},
                              "after": {"chosen": _mean(chosen_share[keep]), "rejected": _mean(rejected_share[keep])}}}
    return kept, dropped, stats
