"""The pair stages: build_pairs (chosen = teacher text, rejected = student text) and score_pairs
(what the losses read from frozen models, computed once); curate_pairs between them is in ``curate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from plad_core import models
from plad_core.artifacts import Artifact, ArtifactStore
from plad_core.config import ConfigError, config_slice
from plad_core.losses import STORED_SCORERS, stored_columns
from plad_core.models import MODEL_DIR
from plad_core.pairs import PAIRS_SCHEMA, build_pairs, prompts_used
from plad_core.stages.checks import check_train_loss, check_unlabeled_fraction
from plad_core.stages.inputs import load_artifact_model, read_split
from plad_core.stages.keys import materialize, precision, teacher_identity
from plad_core.stages.teacher import LocalTeacher, pairs_teacher
from plad_core.training import reference_scores
from plad_core.training.batches import encode_pairs
from plad_core.training.calibrate import check_teacher_tokenizer

# build_pairs' key: what it produces (pairs.curate is the curate_pairs stage's).
BUILD_PAIRS_SLICE = ["pairs.min_chars", "pairs.unlabeled_fraction", "pairs.truncated", "pairs.references"]


def run_build_pairs(cfg: DictConfig, store: ArtifactStore, data: Artifact, teacher_samples: Artifact,
                    student_samples: Artifact, force: bool = False) -> Artifact:
    """Pseudo-preference pairs (chosen = teacher text, rejected = student text) in ``pairs.parquet``,
    from the first ceil(``pairs.unlabeled_fraction`` x n) unlabeled prompts (split order). Their
    ``reference`` is null unless ``pairs.references`` (unlabeled means unlabeled, ``plad_core.pairs``)."""
    fraction = cfg.pairs.unlabeled_fraction
    check_unlabeled_fraction(fraction)
    config = config_slice(cfg, BUILD_PAIRS_SLICE)

    def build(out: Path, work: Path) -> dict[str, Any]:
        unlabeled = read_split(data, "unlabeled")
        unlabeled = unlabeled.head(prompts_used(fraction, len(unlabeled)))
        used = set(unlabeled["id"])
        teacher, student = (pd.read_parquet(a.file("samples.parquet")) for a in (teacher_samples, student_samples))
        pairs, stats = build_pairs(teacher[teacher["id"].isin(used)], student[student["id"].isin(used)],
                                   dict(zip(unlabeled["id"], unlabeled["reference"])) if cfg.pairs.references
                                   else None, cfg.pairs.min_chars,
                                   cfg.pairs.truncated)
        check_not_all_truncated(stats)
        pq.write_table(pa.Table.from_pandas(pairs, schema=PAIRS_SCHEMA, preserve_index=False), out / "pairs.parquet")
        return {**stats, "rows": len(pairs), "unlabeled_prompts": len(unlabeled)}

    return materialize(store, "build_pairs", config, [data, teacher_samples, student_samples],
                       build, force)


def check_not_all_truncated(stats: dict[str, Any]) -> None:
    """A clear error when ``pairs.truncated=drop`` left no pair at all (nothing to train on)."""
    if stats["pairs"] == 0 and stats["dropped_truncated"] > 0:
        t = stats["truncated"]
        raise ConfigError(f"build_pairs: every pair was dropped because a side was cut at max_new_tokens "
                         f"({t['chosen']['dropped']} teacher and {t['rejected']['dropped']} student outputs cut): "
                         "raise teacher.sampling.max_new_tokens / student.sampling.max_new_tokens, or set "
                         "pairs.truncated=keep to train on them without an EOS")


def score_pairs_config(cfg: DictConfig, teacher: LocalTeacher | None = None) -> dict[str, Any]:
    """score_pairs' key config: what it computes (the scorers ``train.loss`` needs, ``max_seq_len``, and
    for any scorer the precision training runs in, as resolved), not the loss name."""
    o = cfg.train.optim
    scorers = list(STORED_SCORERS.get(cfg.train.loss, ()))
    config: dict[str, Any] = {"train.optim.max_seq_len": o.max_seq_len, "scorers": scorers}
    if scorers:
        config["train.optim.bf16"] = precision(cfg, "train.optim.bf16")
    if "teacher" in scorers:
        config["teacher"] = teacher.identity if teacher else teacher_identity(cfg)
    return config


def run_score_pairs(cfg: DictConfig, store: ArtifactStore, pairs: Artifact, sft: Artifact,
                    force: bool = False) -> Artifact:
    """Per-pair scores under frozen models, computed once (``scores.parquet``, ``reference_scores.SCORES_SCHEMA``,
    one row per pair, joined to pairs.parquet on id and sample_index): the scored token counts of y_T and
    y_S always; their summed log-probs under the SFT student (the reference policy) when ``train.loss``
    is dpo or ipo, under the teacher when it is dpkd (the teacher must share the student's tokenizer).

    Always in the DAG, but it loads a model only for those losses; for the others it only tokenizes the
    pairs (under a second). The key holds what it computes, not the loss name, so losses that need the
    same scores share one artifact and a change of beta or loss leaves it alone.
    """
    check_train_loss(cfg)
    o = cfg.train.optim
    teacher = pairs_teacher(cfg, store, pairs) if "teacher" in STORED_SCORERS.get(cfg.train.loss, ()) else None
    config = score_pairs_config(cfg, teacher)
    scorers, bf16 = config["scorers"], precision(cfg, "train.optim.bf16")

    def build(out: Path, work: Path) -> dict[str, Any]:
        tokenizer = models.load_tokenizer(str(sft.file(MODEL_DIR)))
        if "teacher" in scorers:
            check_teacher_tokenizer(cfg, tokenizer)
        frame = pd.read_parquet(pairs.file("pairs.parquet"))
        loaders = {"reference": lambda: load_artifact_model(sft, cfg)[0], "teacher": lambda: teacher.load(cfg)[0]}
        frozen = {name: loaders[name]() for name in scorers}
        scores = reference_scores.score_pairs(frame, encode_pairs(frame, tokenizer, o.max_seq_len), tokenizer.pad_token_id,
                                     frozen, 2 * o.batch_size, bf16)
        pq.write_table(pa.Table.from_pandas(scores, schema=reference_scores.SCORES_SCHEMA, preserve_index=False),
                       out / "scores.parquet")
        stats: dict[str, Any] = {"rows": len(scores), "scorers": scorers}
        for name in scorers:
            chosen, rejected = stored_columns(name)
            stats[f"{name}_logp_per_token"] = {
                "chosen": float(scores[chosen].sum() / scores["chosen_scored_tokens"].sum()),
                "rejected": float(scores[rejected].sum() / scores["rejected_scored_tokens"].sum())}
        return stats

    return materialize(store, "score_pairs", config, [pairs, sft], build, force)
