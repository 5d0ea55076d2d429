"""The student before calibration: init_student (the configured model, or a healed layer slice of
the teacher) and sft_student (supervised fine-tuning on the labeled split)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from plad_core import data as data_lib
from plad_core import models
from plad_core.artifacts import Artifact, ArtifactStore
from plad_core.config import ConfigError
from plad_core.config.checks import STUDENT_FROM_API_TEACHER
from plad_core.evaluation.perplexity import perplexity
from plad_core.models import MODEL_DIR
from plad_core.stages.inputs import load_artifact_model, prompts_for, read_split
from plad_core.stages.keys import (
    materialize,
    precision,
    teacher_identity,
    training_slice,
)
from plad_core.training import steps
from plad_core.training.batches import collate, encode, length_grouped_batches
from plad_core.training.checkpoint import CHECKPOINTS
from plad_core.training.loop import optim_kwargs, train_loop, write_log

log = logging.getLogger("plad.stages")



def heal_texts(data: Artifact, cfg: DictConfig) -> list[str]:
    """Text the sliced student is healed on: labeled prompts with their references, unlabeled prompts."""
    template = cfg.student.prompt.template
    labeled = [data_lib.render_prompt(r, template, [], "") + " " + r["reference"]
               for r in read_split(data, "labeled").to_dict("records")]
    unlabeled = [data_lib.render_prompt(r, template, [], "") for r in read_split(data, "unlabeled").to_dict("records")]
    return labeled + unlabeled


def _slice_and_heal(cfg: DictConfig, data: Artifact, out: Path, work: Path) -> dict[str, Any]:
    """``student.keep_layers`` of the teacher, healed by token KD from the whole teacher (``student.heal``)."""
    s = cfg.student
    teacher, tokenizer = models.load_teacher(cfg)
    student, _ = models.load_teacher(cfg)
    models.slice_layers(student, list(s.keep_layers))
    heal = s.heal
    texts = heal_texts(data, cfg)
    held_out = [data_lib.render_prompt(r, s.prompt.template, [], "") + " " + r["reference"]
                for r in read_split(data, "dev").head(16).to_dict("records")]
    before = perplexity(student, tokenizer, held_out, heal.seq_len)
    items = [encode(tokenizer, t, None, heal.seq_len) for t in texts]
    batches = [collate(b, tokenizer.pad_token_id)
               for b in length_grouped_batches(items, lambda e: len(e.ids), heal.batch_size, heal.seed)]
    teacher.requires_grad_(False)
    history = train_loop(student, batches, steps.distill_step(student, teacher, heal.temperature),
                               lr=heal.lr, max_steps=heal.steps, bf16=precision(cfg, "student.heal.bf16"),
                               seed=heal.seed,
                               checkpoint_every=heal.checkpoint_every, checkpoint_dir=work / CHECKPOINTS,
                               desc="heal student")
    stats = {"layers": len(s.keep_layers), "perplexity_teacher": perplexity(teacher, tokenizer, held_out, heal.seq_len),
             "perplexity_before_heal": before,
             "perplexity_after_heal": perplexity(student, tokenizer, held_out, heal.seq_len),
             "parameters": sum(p.numel() for p in student.parameters())}
    models.save_model(student, tokenizer, out / MODEL_DIR)
    write_log(history, out / "heal_log.parquet")
    log.info("student healed: perplexity %.0f -> %.1f (teacher %.1f)", stats["perplexity_before_heal"],
             stats["perplexity_after_heal"], stats["perplexity_teacher"])
    return stats


def run_init_student(cfg: DictConfig, store: ArtifactStore, data: Artifact, force: bool = False) -> Artifact:
    """The student before SFT: the configured model, or a layer slice of the teacher healed by token KD
    (never of a teacher behind an API: ``load_config`` refuses that, as does this for a config built otherwise)."""
    s = cfg.student
    if not s.model and cfg.teacher.sampling.backend == "openai":
        raise ConfigError(STUDENT_FROM_API_TEACHER)
    if s.model:
        config = {"student": models.model_fingerprint(s.model, s.revision, cfg.cache_dir)}
        upstream: list[Artifact] = []
    else:
        config = {"teacher": teacher_identity(cfg), **training_slice(cfg, ["student.keep_layers", "student.heal"])}
        upstream = [data]

    def build(out: Path, work: Path) -> dict[str, Any]:
        if not s.model:
            return _slice_and_heal(cfg, data, out, work)
        student, tokenizer = models.load_model(s.model, cfg.cache_dir, s.revision, s.trust_remote_code,
                                               s.use_safetensors)
        models.save_model(student, tokenizer, out / MODEL_DIR)
        return {"source": s.model}

    return materialize(store, "init_student", config, upstream, build, force)


def run_sft_student(cfg: DictConfig, store: ArtifactStore, data: Artifact, init: Artifact,
                    force: bool = False) -> Artifact:
    """Supervised fine-tuning on the labeled split; loss on the reference (output) tokens only."""
    config = training_slice(cfg, ["sft", "student.prompt"])

    def build(out: Path, work: Path) -> dict[str, Any]:
        student, tokenizer = load_artifact_model(init, cfg)
        labeled = read_split(data, "labeled")
        prompts, truncated = prompts_for(labeled, data, cfg.student.prompt, tokenizer)
        items = [encode(tokenizer, p, s, cfg.sft.max_seq_len) for p, s in zip(prompts, labeled["reference"])]
        batches = [collate(b, tokenizer.pad_token_id) for b in
                   length_grouped_batches(items, lambda e: len(e.ids), cfg.sft.batch_size, cfg.sft.seed)]
        history = train_loop(student, batches, steps.sft_step(student), **optim_kwargs(cfg.sft),
                                   checkpoint_dir=work / CHECKPOINTS, desc="sft student")
        models.save_model(student, tokenizer, out / MODEL_DIR)
        write_log(history, out / "train_log.parquet")
        return {"examples": len(items), "truncated_prompts": truncated, "steps": len(history),
                "final_loss": history[-1]["loss"] if history else None}

    return materialize(store, "sft_student", config, [data, init], build, force)
