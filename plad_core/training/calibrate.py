"""The calibrate stage's training: the student trained on preference pairs with ``train.loss``.

``calibrate_student`` loads the student (and, for token_kd, the teacher), trains it with
``train_on_pairs`` and saves it; ``run_calibrate`` calls it in this process, and each ``torchrun``
rank calls it too. It knows nothing of Prefect or the artifact store: a pairs frame and a student
folder in, a model and a training log out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from plad_core import models
from plad_core.losses import (
    STORED_SCORERS,
    TEACHER_NEEDS,
    check_loss,
    stored_columns,
    text_only_losses,
)
from plad_core.models import MODEL_DIR
from plad_core.training import distributed, steps
from plad_core.training.batches import pair_batches, split_held_out
from plad_core.training.checkpoint import CHECKPOINTS
from plad_core.training.held_out import Evaluation
from plad_core.training.loop import optim_kwargs, train_loop, write_log


def train_on_pairs(student: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, frame: pd.DataFrame,
                   train_cfg: DictConfig, teacher: PreTrainedModel | None = None,
                   checkpoint_dir: Path | None = None) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Calibrate ``student`` in place on the pairs in ``frame`` with ``train.loss``; returns the
    per-step log and summary stats. dpo, ipo and dpkd read their stored columns from ``frame`` (the pairs
    joined with the score_pairs stage); token_kd needs the frozen ``teacher``.

    ``train.eval_fraction`` of the pairs (at most ``train.eval_max_pairs``) are held out and evaluated
    every ``train.eval_every`` steps; the student ends as the best (``train.best_metric``) or the last
    step (``train.keep``). Checkpoints go to ``checkpoint_dir`` (resumed from when present). Under
    torchrun each rank trains on its share of every batch (``distributed.shard_pairs``)."""
    o = train_cfg.optim
    loss = train_cfg.loss
    check_loss(loss, train_cfg.kd_divergence)
    needed = [c for scorer in STORED_SCORERS.get(loss, ()) for c in stored_columns(scorer)]
    missing = [c for c in needed if c not in frame or frame[c].isna().any()]
    if missing:
        raise ValueError(f"train.loss={loss} reads {missing} from the score_pairs stage, but the pairs lack them")
    if loss == "token_kd" and teacher is None:
        raise ValueError("train.loss=token_kd needs the teacher model in memory: pass teacher=")
    frame, held_out = split_held_out(frame, train_cfg.eval_fraction, train_cfg.eval_max_pairs, o.seed)
    batches = pair_batches(frame, tokenizer, train_cfg)
    evaluation = Evaluation(pair_batches(held_out, tokenizer, train_cfg), train_cfg.eval_every,
                            train_cfg.best_metric, train_cfg.best_mode, train_cfg.keep) if len(held_out) else None
    step = (steps.token_kd_step(student, teacher, train_cfg.kd_divergence, train_cfg.nll_weight)
            if loss == "token_kd" else
            steps.calibration_step(student, loss, train_cfg.beta, train_cfg.gamma, train_cfg.nll_weight,
                                   train_cfg.pair_forward))
    history = train_loop(student, batches, step, **optim_kwargs(o), checkpoint_dir=checkpoint_dir,
                         evaluation=evaluation, shard=distributed.shard_pairs, strategy=train_cfg.launch.strategy,
                         desc=f"calibrate ({train_cfg.loss})")
    score_gap = torch.cat([b["chosen_score"] - b["rejected_score"] for b in batches])
    stats = {"pairs": len(frame), "steps": len(history), "final_loss": history[-1]["loss"],
             "first_pair_accuracy": history[0]["pair_accuracy"],
             "last_pair_accuracy": history[-1]["pair_accuracy"], "mean_score_gap": float(score_gap.mean())}
    return history, {**stats, **_held_out_stats(history, evaluation, len(held_out))}


def _held_out_stats(history: list[dict[str, float]], evaluation: Evaluation | None,
                    pairs: int) -> dict[str, Any]:
    """Held-out pairs, the best evaluated step and which step the model is (``train.keep``)."""
    if evaluation is None:
        return {"held_out_pairs": 0, "kept_step": len(history)}
    best, metric = evaluation.best_row(history), evaluation.metric
    return {"held_out_pairs": pairs, "best_step": best["step"], f"best_{metric}": best[metric],
            f"last_{metric}": history[-1][metric], "kept_step": best["step"] if evaluation.keep == "best" else len(history)}


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


def calibrate_student(cfg: DictConfig, frame: pd.DataFrame, student_dir: Path, out: Path, work: Path) -> dict[str, Any]:
    """``run_calibrate``'s training, in this process or as one rank under torchrun (``training.torchrun``):
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
    weights, _ = distributed.full_state(student)  # on every rank: under FSDP it gathers the shards
    if distributed.ranks().rank == 0:
        models.save_model(student, tokenizer, out / MODEL_DIR, weights)
        write_log(history, out / "train_log.parquet")
    return stats
