"""The calibrate stage: the SFT student trained on the pairs with ``train.loss``, in this process or
as ranks under torchrun (``calibrate_worker``), both through ``calibrate_student``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from plad_core import calibrate_worker, models, parallel
from plad_core.artifacts import Artifact, ArtifactStore
from plad_core.pair_training import train_on_pairs
from plad_core.stages.checks import TEACHER_NEEDS, check_train_loss, text_only_losses
from plad_core.stages.inputs import CHECKPOINTS, MODEL_DIR, pairs_with_scores
from plad_core.stages.keys import materialize, teacher_identity, training_slice

log = logging.getLogger("plad.stages")

CALIBRATE_VERSION = 1


def write_log(history: list[dict[str, float]], path: Path) -> None:
    pd.DataFrame(history).to_parquet(path, index=False)


def check_teacher_tokenizer(cfg: DictConfig, student_tokenizer: Any) -> None:
    """dpkd and token_kd feed the student's token ids to the teacher: the two must share a tokenizer."""
    t = cfg.teacher
    teacher_tokenizer = models.load_tokenizer(models.resolve_model_path(t.model, cfg.cache_dir), t.revision,
                                              t.trust_remote_code)
    why = models.vocabulary_mismatch(student_tokenizer, teacher_tokenizer)
    if why:
        student = f"student.model={cfg.student.model}" if cfg.student.model else "the student"
        raise ValueError(f"train.loss={cfg.train.loss} needs the teacher's {TEACHER_NEEDS[cfg.train.loss]} on the "
                         f"student's tokens, but teacher.model={t.model} and {student} do not share a tokenizer: "
                         f"{why}. Set teacher.model / student.model to models with one tokenizer, or choose a loss "
                         f"that needs only the teacher's text ({text_only_losses()})")


def run_calibrate(cfg: DictConfig, store: ArtifactStore, pairs: Artifact, sft: Artifact, scores: Artifact,
                  force: bool = False) -> Artifact:
    """Training of the SFT student on the pairs with ``train.loss`` (``train.LOSS_NAMES``; conf/base.yaml
    gives each one's equation): the PLaD calibration losses, the preference baselines (reading the
    score_pairs columns they need) and the SeqKD / token-KD baselines (token_kd loads the teacher here)."""
    check_train_loss(cfg)
    token_kd = cfg.train.loss == "token_kd"
    config = {**training_slice(cfg, ["train"]), **({"teacher": teacher_identity(cfg)} if token_kd else {})}

    def build(out: Path, work: Path) -> dict[str, Any]:
        frame = pairs_with_scores(pairs, scores)
        if cfg.train.launch.nproc > 1:
            return calibrate_worker.run(cfg, frame, sft.file(MODEL_DIR), out, work, log)
        return calibrate_student(cfg, frame, sft.file(MODEL_DIR), out, work)

    return materialize(store, "calibrate", CALIBRATE_VERSION, config, [pairs, sft, scores], build, force)


def calibrate_student(cfg: DictConfig, frame: pd.DataFrame, student_dir: Path, out: Path, work: Path) -> dict[str, Any]:
    """``run_calibrate``'s training, in this process or as one rank under torchrun (``calibrate_worker``):
    the student from ``student_dir`` trained on ``frame``, resuming from ``work/checkpoints``; rank 0
    writes ``model/`` and ``train_log.parquet`` into ``out``. Returns the training stats."""
    student, tokenizer = models.load_model(str(student_dir), cfg.cache_dir, device=cfg.device)
    teacher = None
    if cfg.train.loss == "token_kd":
        check_teacher_tokenizer(cfg, tokenizer)
        teacher = models.load_teacher(cfg)[0].requires_grad_(False)
        sizes = [m.get_output_embeddings().weight.shape[0] for m in (student, teacher)]
        if sizes[0] != sizes[1]:
            raise ValueError(f"train.loss=token_kd compares next-token distributions, but the student's LM head "
                             f"has {sizes[0]} outputs and teacher.model={cfg.teacher.model}'s {sizes[1]}")
    history, stats = train_on_pairs(student, tokenizer, frame, cfg.train, teacher, work / CHECKPOINTS)
    weights, _ = parallel.full_state(student)  # on every rank: under FSDP it gathers the shards
    if parallel.ranks().rank == 0:
        models.save_model(student, tokenizer, out / MODEL_DIR, weights)
        write_log(history, out / "train_log.parquet")
    return stats
