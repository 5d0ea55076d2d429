"""The sampling stages: teacher outputs y_T and SFT-student outputs y_S for every unlabeled prompt,
sharded and resumable; ``sampling_jobs`` hands the shards to another process (Dask)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from plad_core import models
from plad_core.artifacts import Artifact, ArtifactStore
from plad_core.models import MODEL_DIR
from plad_core.sampling import check_backend, openai_api, vllm_backend
from plad_core.sampling.samplers import SamplerSpec, ShardJob, lazy_sampler
from plad_core.sampling.shards import plan_shards, sample_sharded
from plad_core.stages.inputs import prompts_for, read_split
from plad_core.stages.keys import (
    api_identity,
    materialize,
    precision,
    sampling_slice,
    stage_key,
)
from plad_core.stages.teacher import LocalTeacher, local_teacher, teacher_model_spec

SAMPLING_SIDES = {"sample_teacher": "teacher", "sample_student": "student"}
STUDENT_BACKENDS = ("auto", "hf", "vllm")  # the student is a local artifact: no API


@dataclass(frozen=True)
class _Sampling:
    """A sampling stage's inputs, known before any model is loaded: its key, sampler and row label."""
    stage: str
    config: dict[str, Any]
    upstream: tuple[Artifact, ...]
    spec: SamplerSpec
    label: str                   # the samples' ``model`` column
    prompt: DictConfig           # what the prompts are built with


def _sampling(cfg: DictConfig, stage: str, data: Artifact, sft: Artifact | None = None,
              teacher: LocalTeacher | None = None) -> _Sampling:
    """``stage``'s inputs; ``teacher`` (sample_teacher with a local teacher): the one to sample, tuned or
    not (None: ``teacher.model`` untuned)."""
    side = SAMPLING_SIDES[stage]
    sp = cfg[side].sampling
    where = f"{side}.sampling"
    compiled = vllm_backend.resolve_compile(sp.compile, where)
    api = None
    prompt = cfg[side].prompt
    if side == "teacher":
        backend = check_backend(sp.backend, where)
        if backend == "openai":
            api = openai_api.ApiSettings.from_config(sp.api).check(f"{where}.api")
            load = {"model": api.model, "revision": cfg.teacher.revision,
                    "trust_remote_code": cfg.teacher.trust_remote_code, "use_safetensors": cfg.teacher.use_safetensors}
            config = {"teacher": api_identity(api), **sampling_slice(cfg, side, backend, compiled)}
            upstream, label = (data,), api.model
        else:
            teacher = teacher or local_teacher(cfg, None)
            load, config, upstream, label = _local_teacher_sampling(cfg, data, teacher, backend, compiled)
            prompt = teacher.prompt
    else:
        backend = check_backend(sp.backend, where, STUDENT_BACKENDS,
                                "the student is the sft_student artifact, built by this pipeline and sampled in-process")
        load = {"model": str(sft.file(MODEL_DIR).resolve())}
        config = sampling_slice(cfg, side, backend, compiled)
        upstream, label = (data, sft), f"sft_student:{sft.key}"
    spec = SamplerSpec(backend=backend, n=sp.n, temperature=sp.temperature, top_p=sp.top_p,
                       max_new_tokens=sp.max_new_tokens, stop=tuple(sp.stop), dtype=precision(cfg, f"{where}.dtype"),
                       batch_size=sp.batch_size, seed=sp.seed, compile=compiled, cache_dir=str(Path(cfg.cache_dir).resolve()), device=cfg.device,
                       api=tuple(dataclasses.asdict(api).items()) if api else None, desc=f"sample {label}", **load)
    return _Sampling(stage, config, upstream, spec, label, prompt)


def _local_teacher_sampling(cfg: DictConfig, data: Artifact, teacher: LocalTeacher, backend: str,
                            compiled: bool) -> tuple[dict[str, Any], dict[str, Any], tuple[Artifact, ...], str]:
    """(model to load, key config, upstream, label) of a local teacher: untuned, keyed as it always was;
    tuned, keyed by the sft_teacher artifact (an upstream) and the zero-shot prompt it samples with."""
    load = {"model": teacher.model, "revision": teacher.revision, "trust_remote_code": teacher.trust_remote_code,
            "use_safetensors": teacher.use_safetensors}
    config = {"teacher": teacher.identity, **sampling_slice(cfg, "teacher", backend, compiled)}
    if teacher.tuned is None:
        return load, config, (data,), cfg.teacher.model
    config["teacher.prompt"] = OmegaConf.to_container(teacher.prompt)
    return load, config, (data, teacher.tuned), f"sft_teacher:{teacher.tuned.key}"


def _sampling_inputs(cfg: DictConfig, store: ArtifactStore, s: _Sampling) -> dict[str, Any]:
    """``sample_sharded``'s arguments but the generate function and folders: ids, prompts, the
    samples' constant columns (meta), seed, shard_size and earlier samples of this model and
    settings; plus the count of truncated prompts. Loads a tokenizer, not the model."""
    side, data = SAMPLING_SIDES[s.stage], s.upstream[0]
    sp = cfg[side].sampling
    tokenizer = (openai_api.CharTokens() if s.spec.backend == "openai"
                 else models.load_tokenizer(models.resolve_model_path(s.spec.model, s.spec.cache_dir),
                                            s.spec.revision, s.spec.trust_remote_code))
    rows = read_split(data, "unlabeled")
    prompts, truncated = prompts_for(rows, data, s.prompt, tokenizer)
    earlier = store.find(s.stage, s.config, {a.stage: a.key for a in s.upstream[1:]})
    meta = {"backend": s.spec.backend, "model": s.label, "temperature": sp.temperature, "top_p": sp.top_p,
            "max_new_tokens": sp.max_new_tokens}
    return {"ids": list(rows["id"]), "prompts": prompts, "meta": meta, "seed": sp.seed, "shard_size": sp.shard_size,
            "earlier": pd.concat([pd.read_parquet(a.file("samples.parquet")) for a in earlier]) if earlier else None,
            "truncated": truncated}


def _run_sampling(cfg: DictConfig, store: ArtifactStore, s: _Sampling, force: bool) -> Artifact:
    def build(out: Path, work: Path) -> dict[str, Any]:
        inputs = _sampling_inputs(cfg, store, s)
        truncated = inputs.pop("truncated")
        # the model loads at the first shard not yet committed: none when every shard ran elsewhere (Dask)
        stats = sample_sharded(generate_fn=lazy_sampler(s.spec), work_dir=work, out_path=out / "samples.parquet",
                               **inputs)
        return {**stats, "truncated_prompts": truncated, "backend": s.spec.backend}

    return materialize(store, s.stage, s.config, list(s.upstream), build, force)


def sampling_jobs(cfg: DictConfig, store: ArtifactStore, stage: str, data: Artifact, sft: Artifact | None = None,
                  force: bool = False, torch_threads: int = 0) -> list[ShardJob]:
    """The shards of ``stage`` (sample_teacher or sample_student) that are not committed yet, as jobs
    another process can run (``samplers.run_shard_job``); none when the artifact exists (unless
    ``force``). Running them all and then ``run_<stage>`` with the same arguments commits the
    artifact from the shards, exactly as if the stage had sampled them itself."""
    teacher = teacher_model_spec(cfg, store, data) if stage == "sample_teacher" else None
    s = _sampling(cfg, stage, data, sft, teacher)
    key = stage_key(stage, s.config, list(s.upstream))
    if not force and store.get(stage, key) is not None:
        return []
    work = store.work_dir(stage, key).resolve()
    work.mkdir(parents=True, exist_ok=True)
    inputs = _sampling_inputs(cfg, store, s)
    plan = plan_shards(inputs["ids"], inputs["prompts"], inputs["seed"], inputs["shard_size"], inputs["earlier"])
    return [ShardJob(s.spec, shard, tuple(inputs["meta"].items()), str(work), torch_threads)
            for shard in plan.shards if not shard.path(work).is_file()]


def run_sample_teacher(cfg: DictConfig, store: ArtifactStore, data: Artifact, tuned_teacher: Artifact,
                       force: bool = False) -> Artifact:
    """Teacher outputs y_T for every unlabeled prompt (``samples.parquet``), sharded and resumable.

    ``tuned_teacher`` is the sft_teacher artifact: with a model, that model is sampled, zero-shot, and the artifact is an upstream of the samples; without one (teacher SFT
    off), ``teacher.model`` with ``teacher.prompt`` as configured, keyed as without the stage.
    ``teacher.sampling.backend``: hf and vllm load the teacher here (auto: vllm when installed);
    openai samples an OpenAI-compatible endpoint (``teacher.sampling.api``) and loads nothing, not
    even a tokenizer: prompts are truncated to ``prompt.max_tokens`` units of
    ``openai_api.CHARS_PER_TOKEN`` characters. Shards already committed (a killed run, or
    ``sampling_jobs`` run elsewhere) are kept.
    """
    local = None if cfg.teacher.sampling.backend == "openai" else local_teacher(cfg, tuned_teacher)
    return _run_sampling(cfg, store, _sampling(cfg, "sample_teacher", data, teacher=local), force)


def run_sample_student(cfg: DictConfig, store: ArtifactStore, data: Artifact, sft: Artifact,
                       force: bool = False) -> Artifact:
    """SFT-student outputs y_S for every unlabeled prompt (``samples.parquet``), sharded and resumable
    (``student.sampling.backend``: hf, vllm or auto)."""
    return _run_sampling(cfg, store, _sampling(cfg, "sample_student", data, sft), force)
