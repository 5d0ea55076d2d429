"""The teacher before sampling: sft_teacher, supervised fine-tuning of a local teacher on the labeled
split (PLaD fine-tunes teacher and student on the labeled data before it samples them; Zhang et al.,
2024, Sec. 4.1), and ``teacher_model_spec``, the teacher every later stage loads.

The stage trains with the student's SFT trainer (``steps.sft_step`` in ``loop.train_loop``: token-mean
NLL of the reference tokens). ``teacher.sft.held_out`` labeled rows are kept out of training and
scored every ``teacher.sft.eval_every`` steps; the weights kept are those of the step with the lowest
held-out NLL. The paper picks the teacher's checkpoint by win rate against the references, which needs
a judge that can tell summaries apart; the embedded judge cannot (its validity check), so the likelihood of the
held-out references stands in for it. Dev rows are never read here.

Off (``teacher.sft.enabled`` false, or auto with an API teacher, used as is) the stage still commits
an artifact, keyed by ``{"enabled": false}`` alone, that holds no model; then no later key names it,
so every key is what it was without this stage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from plad_core import models
from plad_core.artifacts import Artifact, ArtifactStore
from plad_core.config import ConfigError
from plad_core.models import MODEL_DIR
from plad_core.sampling import openai_api
from plad_core.stages.inputs import prompts_for, read_split
from plad_core.stages.keys import (
    api_identity,
    keyed_slice,
    materialize,
    stage_key,
    teacher_identity,
    training_slice,
)
from plad_core.training import steps
from plad_core.training.batches import (
    collate,
    encode,
    length_grouped_batches,
    split_held_out,
)
from plad_core.training.checkpoint import CHECKPOINTS
from plad_core.training.held_out import Evaluation
from plad_core.training.loop import optim_kwargs, train_loop, write_log

log = logging.getLogger("plad.stages")

LOCAL_BACKENDS = ("auto", "hf", "vllm")  # teacher.sampling.backend values that load teacher.model here


def teacher_sft_enabled(cfg: DictConfig) -> bool:
    """``teacher.sft.enabled`` resolved: auto is on for a local teacher, off for an API one; true with
    an API teacher is a ConfigError (``load_config`` refuses it first)."""
    setting, backend = cfg.teacher.sft.enabled, cfg.teacher.sampling.backend
    if setting == "auto":
        return backend in LOCAL_BACKENDS
    if setting is True and backend not in LOCAL_BACKENDS:
        raise ConfigError(f"teacher.sft.enabled=true, but teacher.sampling.backend={backend} has no weights "
                          "here to fine-tune: set teacher.sft.enabled=auto or false")
    return bool(setting)


def tuned_prompt(cfg: DictConfig) -> DictConfig:
    """The prompt a fine-tuned teacher is trained and prompted with: ``teacher.prompt`` zero-shot."""
    return OmegaConf.create({**OmegaConf.to_container(cfg.teacher.prompt, resolve=True), "fewshot_k": 0})


def sft_teacher_config(cfg: DictConfig) -> dict[str, Any]:
    """sft_teacher's key config: ``{"enabled": False}`` when off; else the teacher's identity, the
    trainer settings (``training_slice``, precision resolved) and the zero-shot prompt it trains on."""
    if not teacher_sft_enabled(cfg):
        return {"enabled": False}
    trainer = {k: v for k, v in training_slice(cfg, ["teacher.sft"])["teacher.sft"].items() if k != "enabled"}
    return {"enabled": True, "teacher": teacher_identity(cfg), "teacher.sft": trainer,
            "teacher.prompt": OmegaConf.to_container(tuned_prompt(cfg))}


def _batches(tokenizer: Any, prompts: list[str], references: list[str], s: DictConfig) -> list[dict[str, Any]]:
    items = [encode(tokenizer, p, r, s.max_seq_len) for p, r in zip(prompts, references)]
    return [collate(b, tokenizer.pad_token_id)
            for b in length_grouped_batches(items, lambda e: len(e.ids), s.batch_size, s.seed)]


def _fine_tune(cfg: DictConfig, data: Artifact, out: Path, work: Path) -> dict[str, Any]:
    """The teacher trained on the labeled rows but the held-out ones; the best held-out step kept."""
    s = cfg.teacher.sft
    teacher, tokenizer = models.load_teacher(cfg)
    train_rows, held = split_held_out(read_split(data, "labeled"), 1.0, s.held_out, s.seed)
    prompt = tuned_prompt(cfg)
    prompts, truncated = prompts_for(train_rows, data, prompt, tokenizer)
    batches = _batches(tokenizer, prompts, list(train_rows["reference"]), s)
    evaluation = None
    if len(held):
        held_prompts, _ = prompts_for(held, data, prompt, tokenizer)
        evaluation = Evaluation(_batches(tokenizer, held_prompts, list(held["reference"]), s), s.eval_every,
                                "eval_loss", "min", "best")
    history = train_loop(teacher, batches, steps.sft_step(teacher), **optim_kwargs(s), evaluation=evaluation,
                         checkpoint_dir=work / CHECKPOINTS, desc="sft teacher")
    models.save_model(teacher, tokenizer, out / MODEL_DIR)
    write_log(history, out / "train_log.parquet")
    stats: dict[str, Any] = {"enabled": True, "examples": len(train_rows), "held_out_rows": len(held),
                             "truncated_prompts": truncated, "steps": len(history),
                             "final_loss": history[-1]["loss"] if history else None, "kept_step": len(history)}
    best = evaluation.best_row(history) if evaluation else None
    if best is not None:
        stats.update(kept_step=best["step"], best_eval_loss=best["eval_loss"], last_eval_loss=history[-1]["eval_loss"])
        log.info("teacher SFT: kept step %d of %d (held-out NLL %.3f)", best["step"], len(history), best["eval_loss"])
    return stats


def run_sft_teacher(cfg: DictConfig, store: ArtifactStore, data: Artifact, force: bool = False) -> Artifact:
    """The teacher fine-tuned on the labeled split (``model/``, ``train_log.parquet`` with ``eval_loss``
    on the held-out rows), or, when ``teacher.sft`` is off, an artifact with no model that says so."""
    config = sft_teacher_config(cfg)

    def build(out: Path, work: Path) -> dict[str, Any]:
        return _fine_tune(cfg, data, out, work) if config["enabled"] else {"enabled": False}

    return materialize(store, "sft_teacher", config, [data] if config["enabled"] else [], build, force)


@dataclass(frozen=True)
class LocalTeacher:
    """The local teacher the later stages load: ``teacher.model`` as configured, or the sft_teacher
    artifact's model folder (``tuned``) with the zero-shot prompt it was trained on. ``identity`` is
    what enters their keys in place of ``teacher_identity``: the same when untuned, so no key moves."""
    model: str
    revision: str | None
    trust_remote_code: bool
    use_safetensors: bool
    prompt: DictConfig
    identity: dict[str, Any]
    tuned: Artifact | None = None

    def load(self, cfg: DictConfig) -> tuple[Any, Any]:
        return models.load_model(self.model, cfg.cache_dir, self.revision, self.trust_remote_code,
                                 self.use_safetensors, cfg.device)

    def key_entries(self) -> dict[str, Any]:
        """``{"teacher": identity, "teacher.prompt": prompt}``, as the dev outputs' and evaluate's keys hold them."""
        return {"teacher": self.identity, "teacher.prompt": OmegaConf.to_container(self.prompt)}


def local_teacher(cfg: DictConfig, tuned: Artifact | None) -> LocalTeacher:
    """The ``LocalTeacher`` of ``tuned`` (an sft_teacher artifact; None or one without a model: untuned)."""
    t = cfg.teacher
    if tuned is None or not tuned.manifest["config"].get("enabled"):
        return LocalTeacher(t.model, t.revision, t.trust_remote_code, t.use_safetensors, t.prompt,
                            teacher_identity(cfg))
    return LocalTeacher(str(tuned.file(MODEL_DIR).resolve()), None, t.trust_remote_code, True, tuned_prompt(cfg),
                        {"sft_teacher": tuned.key}, tuned)


def teacher_model_spec(cfg: DictConfig, store: ArtifactStore, data: Artifact) -> LocalTeacher:
    """The local teacher for a stage that loads it without the sft_teacher artifact in hand (sampling on
    Dask, the teacher's dev outputs, its log-probs): the sft_teacher artifact of ``data`` looked up in
    ``store``. It is upstream of sample_teacher, so every later stage finds it built; a lookup, not a
    build, so the code of those stages does not reach the trainer (``code_version``). For a tune_data
    artifact (a tuning table's rows), the one of its source prepare_data artifact."""
    if not teacher_sft_enabled(cfg):
        return local_teacher(cfg, None)
    if data.stage == "tune_data":  # a tuning slice: the teacher is the one tuned on its source's labeled split
        source = data.manifest["upstream"]["prepare_data"]
        data = store.get("prepare_data", source)
        if data is None:
            raise FileNotFoundError(f"the tuning slice's prepare_data artifact {source} is not in {store.root}")
    key = stage_key("sft_teacher", sft_teacher_config(cfg), [data])
    tuned = store.get("sft_teacher", key)
    if tuned is None:
        raise FileNotFoundError(f"teacher.sft is on, but the sft_teacher artifact {key} is not in {store.root}: "
                                "build it first (plad stage sft_teacher, or the distill flow)")
    return local_teacher(cfg, tuned)


def pairs_teacher(cfg: DictConfig, store: ArtifactStore, pairs: Artifact) -> LocalTeacher:
    """The teacher whose samples are the chosen side of ``pairs`` (a build_pairs artifact): the
    sft_teacher artifact its sample_teacher upstream names, else the configured teacher. For the
    stages that score the pairs under the teacher (dpkd's log-probs, token_kd) without data in hand."""
    samples = store.get("sample_teacher", pairs.manifest["upstream"].get("sample_teacher", ""))
    tuned_key = samples.manifest["upstream"].get("sft_teacher") if samples is not None else None
    if tuned_key is None:
        return local_teacher(cfg, None)
    tuned = store.get("sft_teacher", tuned_key)
    if tuned is None:
        raise FileNotFoundError(f"the pairs {pairs.key} come from the tuned teacher sft_teacher/{tuned_key}, "
                                f"which is not in {store.root}")
    return local_teacher(cfg, tuned)


def with_teacher(cfg: DictConfig, teacher: LocalTeacher) -> DictConfig:
    """``cfg`` with ``teacher.model`` the model of ``teacher``, for code that loads the teacher from a
    config (``models.load_teacher``, torchrun's ranks); ``cfg`` itself when untuned. The judge keeps the
    configured model (``eval.judge.model`` is resolved first: its default is ``${teacher.model}``)."""
    if teacher.tuned is None:
        return cfg
    merged = OmegaConf.merge(cfg, {"teacher": {"model": teacher.model, "revision": None, "use_safetensors": True},
                                   "eval": {"judge": {"model": cfg.eval.judge.model}}})
    OmegaConf.set_readonly(merged, True)
    return merged


def teacher_key_entries(cfg: DictConfig, store: ArtifactStore, data: Artifact) -> dict[str, Any]:
    """The teacher as the dev outputs' and evaluate's keys name it: ``{"teacher": ..., "teacher.prompt":
    ...}``, an endpoint's identity behind an API, else ``teacher_model_spec``'s (untuned: as it always was)."""
    if cfg.teacher.sampling.backend == "openai":
        api = openai_api.ApiSettings.from_config(cfg.teacher.sampling.api).check("teacher.sampling.api")
        return {"teacher": api_identity(api), **keyed_slice(cfg, ["teacher.prompt"])}
    return teacher_model_spec(cfg, store, data).key_entries()


def repeated_trigram_share(text: str) -> float:
    """Share of a text's word 3-grams (lower-cased, split on whitespace) that repeat an earlier 3-gram
    of the same text; 0 for a text of fewer than three words. A looping teacher scores high."""
    words = text.lower().split()
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    if not grams:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams)
