"""The pipeline's stages as plain functions: ``run_<stage>(cfg, store, *upstream) -> Artifact``.

Each stage names the config paths it reads (its slice) and a code version; with the upstream
artifact keys these make its artifact key (see ``plad_core.artifacts``). Nothing here knows Prefect:
``flows/distill.py`` wraps these functions as tasks, and ``run_stage`` below resolves the same DAG
for plain Python callers and ``plad stage``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig

from plad_core import data as data_lib
from plad_core import evaluate as eval_lib
from plad_core import calibrate_worker, models, parallel, report, scoring, train
from plad_core import judge as judge_lib
from plad_core.artifacts import Artifact, ArtifactStore, artifact_key, sha256_file
from plad_core.config import config_slice
from plad_core.pair_training import encode_pairs, scored_tokens, train_on_pairs
from plad_core.pairs import PAIRS_SCHEMA, build_pairs, prompts_used
from plad_core.progress import ProgressCallback, Steps
from plad_core.registry import Registry, promotion_decision
from plad_core.sampling import check_backend, hf, openai_api, vllm_backend
from plad_core.sampling.samplers import SamplerSpec, ShardJob, lazy_sampler
from plad_core.sampling.shards import plan_shards, sample_sharded

log = logging.getLogger("plad.stages")

DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "prepare_data": (),
    "init_student": ("prepare_data",),
    "sft_student": ("prepare_data", "init_student"),
    "sample_teacher": ("prepare_data",),
    "sample_student": ("prepare_data", "sft_student"),
    "build_pairs": ("prepare_data", "sample_teacher", "sample_student"),
    "score_pairs": ("build_pairs", "sft_student"),
    "calibrate": ("build_pairs", "sft_student", "score_pairs"),
    "evaluate": ("prepare_data", "sft_student", "calibrate"),
}

# Bump a stage's version when its code changes what it produces: its artifacts and all downstream ones rebuild.
VERSIONS = {name: 1 for name in DEPENDENCIES}
VERSIONS["evaluate"] = 4  # v2: bootstrap CIs, paired test, calibration, length buckets, report.html; v3: judge win rates;
                          # v4: each system's outputs read from a dev_outputs artifact (run_dev_outputs)

MODEL_DIR = "model"
DATA_SLICE = ["data.task", "data.path", "data.format", "data.n_labeled", "data.n_unlabeled", "data.n_dev", "data.split_salt"]


def _key(stage: str, config: dict[str, Any], upstream: list[Artifact]) -> str:
    """The artifact key ``_materialize`` will commit under (for a build that must name its own folder)."""
    return artifact_key(stage, VERSIONS[stage], config, {a.stage: a.key for a in upstream})


def _materialize(store: ArtifactStore, stage: str, config: dict[str, Any], upstream: list[Artifact],
                 build: Callable[[Path, Path], dict[str, Any]], force: bool) -> Artifact:
    return store.materialize(stage, VERSIONS[stage], config, {a.stage: a.key for a in upstream}, build, force)


def _rows(data: Artifact, split: str) -> pd.DataFrame:
    rows = pd.read_parquet(data.file("rows.parquet"))
    return rows[rows["split"] == split].reset_index(drop=True)


def _prompts(rows: pd.DataFrame, data: Artifact, prompt_cfg: DictConfig, tokenizer: Any) -> tuple[list[str], int]:
    spec = data_lib.task_spec(data.manifest["config"]["data.task"])
    examples = data_lib.fewshot_examples(_rows(data, "labeled"), prompt_cfg.fewshot_k, spec.body)
    return data_lib.build_prompts(rows, tokenizer, prompt_cfg.template, examples, prompt_cfg.fewshot_separator,
                                  prompt_cfg.max_tokens, spec)


def _teacher_identity(cfg: DictConfig) -> dict[str, Any]:
    return models.model_fingerprint(cfg.teacher.model, cfg.teacher.revision)


def _load_teacher(cfg: DictConfig):
    t = cfg.teacher
    return models.load_model(t.model, cfg.cache_dir, t.revision, t.trust_remote_code, t.use_safetensors, cfg.device)


def _load_artifact_model(artifact: Artifact, cfg: DictConfig):
    return models.load_model(str(artifact.file(MODEL_DIR)), cfg.cache_dir, device=cfg.device)


def _write_log(history: list[dict[str, float]], path: Path) -> None:
    pd.DataFrame(history).to_parquet(path, index=False)


CHECKPOINTS = "checkpoints"  # train_loop's folder in a stage's work dir, which survives a crash (exact resume)
# How a model is trained, not which model: exact resume, recomputed activations, and the number of
# ranks (the same global batches; tests/test_ddp.py holds them to 1e-5). Left out of artifact keys,
# as _sampling_slice leaves out sampling's speed knobs, so turning them on rebuilds nothing.
TRAINING_MECHANICS = ("checkpoint_every", "gradient_checkpointing", "launch")


def _training_slice(cfg: DictConfig, paths: list[str]) -> dict[str, Any]:
    """``config_slice`` without the ``TRAINING_MECHANICS`` keys, at any depth."""
    def strip(node: Any) -> Any:
        return {k: strip(v) for k, v in node.items() if k not in TRAINING_MECHANICS} if isinstance(node, dict) else node
    return strip(config_slice(cfg, paths))


def run_prepare_data(cfg: DictConfig, store: ArtifactStore, force: bool = False) -> Artifact:
    """Load, validate and split the task's rows into labeled / unlabeled / dev (``rows.parquet``)."""
    path = cfg.data.path
    fingerprint = sha256_file(Path(path)) if Path(path).is_file() else path
    config = {**config_slice(cfg, DATA_SLICE), "content_sha256": fingerprint}

    def build(out: Path, work: Path) -> dict[str, Any]:
        loaded = data_lib.load_rows(path, cfg.data.format, cfg.data.task)
        sizes = {"labeled": cfg.data.n_labeled, "unlabeled": cfg.data.n_unlabeled, "dev": cfg.data.n_dev}
        frame = data_lib.split_rows(loaded.rows, sizes, cfg.data.split_salt, cfg.data.task)
        pq.write_table(pa.Table.from_pandas(frame, schema=data_lib.rows_schema(cfg.data.task), preserve_index=False),
                       out / "rows.parquet")
        return {"rows": frame["split"].value_counts().to_dict(), "source_rows": len(loaded.rows),
                "dropped_empty": loaded.dropped_empty}

    return _materialize(store, "prepare_data", config, [], build, force)


def _heal_texts(data: Artifact, cfg: DictConfig) -> list[str]:
    """Text the sliced student is healed on: labeled prompts with their references, unlabeled prompts."""
    template = cfg.student.prompt.template
    labeled = [data_lib.render_prompt(r, template, [], "") + " " + r["reference"]
               for r in _rows(data, "labeled").to_dict("records")]
    unlabeled = [data_lib.render_prompt(r, template, [], "") for r in _rows(data, "unlabeled").to_dict("records")]
    return labeled + unlabeled


def run_init_student(cfg: DictConfig, store: ArtifactStore, data: Artifact, force: bool = False) -> Artifact:
    """The student before SFT: the configured model, or a layer slice of the teacher healed by token KD."""
    s = cfg.student
    if s.model:
        config = {"student": models.model_fingerprint(s.model, s.revision)}
        upstream: list[Artifact] = []
    else:
        config = {"teacher": _teacher_identity(cfg), **_training_slice(cfg, ["student.keep_layers", "student.heal"])}
        upstream = [data]

    def build(out: Path, work: Path) -> dict[str, Any]:
        if s.model:
            student, tokenizer = models.load_model(s.model, cfg.cache_dir, s.revision, s.trust_remote_code,
                                                   s.use_safetensors)
            models.save_model(student, tokenizer, out / MODEL_DIR)
            return {"source": s.model}
        teacher, tokenizer = _load_teacher(cfg)
        student, _ = _load_teacher(cfg)
        models.slice_layers(student, list(s.keep_layers))
        heal = s.heal
        texts = _heal_texts(data, cfg)
        held_out = [data_lib.render_prompt(r, s.prompt.template, [], "") + " " + r["reference"]
                    for r in _rows(data, "dev").head(16).to_dict("records")]
        before = train.perplexity(student, tokenizer, held_out, heal.seq_len)
        items = [train.encode(tokenizer, t, None, heal.seq_len) for t in texts]
        batches = [train.collate(b, tokenizer.pad_token_id)
                   for b in train.length_grouped_batches(items, lambda e: len(e.ids), heal.batch_size, heal.seed)]
        teacher.requires_grad_(False)
        history = train.train_loop(student, batches, train.distill_step(student, teacher, heal.temperature),
                                   lr=heal.lr, max_steps=heal.steps, bf16=heal.bf16, seed=heal.seed,
                                   checkpoint_every=heal.checkpoint_every, checkpoint_dir=work / CHECKPOINTS,
                                   desc="heal student")
        stats = {"layers": len(s.keep_layers), "perplexity_teacher": train.perplexity(teacher, tokenizer, held_out, heal.seq_len),
                 "perplexity_before_heal": before,
                 "perplexity_after_heal": train.perplexity(student, tokenizer, held_out, heal.seq_len),
                 "parameters": sum(p.numel() for p in student.parameters())}
        models.save_model(student, tokenizer, out / MODEL_DIR)
        _write_log(history, out / "heal_log.parquet")
        log.info("student healed: perplexity %.0f -> %.1f (teacher %.1f)", stats["perplexity_before_heal"],
                 stats["perplexity_after_heal"], stats["perplexity_teacher"])
        return stats

    return _materialize(store, "init_student", config, upstream, build, force)


def run_sft_student(cfg: DictConfig, store: ArtifactStore, data: Artifact, init: Artifact,
                    force: bool = False) -> Artifact:
    """Supervised fine-tuning on the labeled split; loss on the reference (output) tokens only."""
    config = _training_slice(cfg, ["sft", "student.prompt"])

    def build(out: Path, work: Path) -> dict[str, Any]:
        student, tokenizer = _load_artifact_model(init, cfg)
        labeled = _rows(data, "labeled")
        prompts, truncated = _prompts(labeled, data, cfg.student.prompt, tokenizer)
        items = [train.encode(tokenizer, p, s, cfg.sft.max_seq_len) for p, s in zip(prompts, labeled["reference"])]
        batches = [train.collate(b, tokenizer.pad_token_id) for b in
                   train.length_grouped_batches(items, lambda e: len(e.ids), cfg.sft.batch_size, cfg.sft.seed)]
        history = train.train_loop(student, batches, train.sft_step(student), **train.optim_kwargs(cfg.sft),
                                   checkpoint_dir=work / CHECKPOINTS, desc="sft student")
        models.save_model(student, tokenizer, out / MODEL_DIR)
        _write_log(history, out / "train_log.parquet")
        return {"examples": len(items), "truncated_prompts": truncated, "steps": len(history),
                "final_loss": history[-1]["loss"] if history else None}

    return _materialize(store, "sft_student", config, [data, init], build, force)


def _sampling_slice(cfg: DictConfig, side: str, backend: str, compiled: bool = False) -> dict[str, Any]:
    """``<side>.prompt`` and ``<side>.sampling`` as they enter the sampling artifact's key, for the
    resolved ``backend`` and ``compile`` setting (``auto`` is keyed by what it resolved to).

    With hf, ``backend``, ``api`` and ``compile`` are left out (hf keys are what they were before
    there were backends). With vllm, ``backend: vllm`` is in and ``batch_size`` (hf's batching) out;
    ``compile: true`` is in when vLLM compiles (fused kernels round differently), and an eager
    engine's key has no ``compile`` (as before the setting existed). With openai, the endpoint's
    identity is in the key's ``teacher`` entry; dtype, batch_size and the api's throughput and retry
    knobs change how fast, not what, so they are out.
    """
    out = config_slice(cfg, [f"{side}.prompt", f"{side}.sampling"])
    sampling = dict(out[f"{side}.sampling"])
    sampling.pop("backend")
    sampling.pop("api")
    sampling.pop("compile")
    if backend == "vllm":
        sampling = {**{k: v for k, v in sampling.items() if k != "batch_size"}, "backend": "vllm",
                    **({"compile": True} if compiled else {})}
    elif backend == "openai":
        sampling = {k: v for k, v in sampling.items() if k not in ("dtype", "batch_size")}
    out[f"{side}.sampling"] = sampling
    return out


def _api_identity(api: openai_api.ApiSettings) -> dict[str, Any]:
    """A teacher behind an API is known by its endpoint and served name (its weights are not visible)."""
    return {"backend": "openai", "base_url": openai_api.api_root(api.base_url), "model": api.model,
            "mode": api.mode, "prompt_truncation": f"{openai_api.CHARS_PER_TOKEN} characters per token"}


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


def _sampling(cfg: DictConfig, stage: str, data: Artifact, sft: Artifact | None = None) -> _Sampling:
    side = SAMPLING_SIDES[stage]
    sp = cfg[side].sampling
    where = f"{side}.sampling"
    compiled = vllm_backend.resolve_compile(sp.compile, where)
    api = None
    if side == "teacher":
        backend = check_backend(sp.backend, where)
        if backend == "openai":
            api = openai_api.ApiSettings.from_config(sp.api).check(f"{where}.api")
        t = cfg.teacher
        load = {"model": api.model if api else t.model,
                "revision": t.revision, "trust_remote_code": t.trust_remote_code, "use_safetensors": t.use_safetensors}
        config = {"teacher": _api_identity(api) if api else _teacher_identity(cfg),
                  **_sampling_slice(cfg, side, backend, compiled)}
        upstream, label = (data,), api.model if api else t.model
    else:
        backend = check_backend(sp.backend, where, STUDENT_BACKENDS,
                                "the student is the sft_student artifact, built by this pipeline and sampled in-process")
        load = {"model": str(sft.file(MODEL_DIR).resolve())}
        config = _sampling_slice(cfg, side, backend, compiled)
        upstream, label = (data, sft), f"sft_student:{sft.key}"
    spec = SamplerSpec(backend=backend, n=sp.n, temperature=sp.temperature, top_p=sp.top_p,
                       max_new_tokens=sp.max_new_tokens, stop=tuple(sp.stop), dtype=sp.dtype, batch_size=sp.batch_size,
                       seed=sp.seed, compile=compiled, cache_dir=str(Path(cfg.cache_dir).resolve()), device=cfg.device,
                       api=tuple(dataclasses.asdict(api).items()) if api else None, desc=f"sample {label}", **load)
    return _Sampling(stage, config, upstream, spec, label)


def _sampling_inputs(cfg: DictConfig, store: ArtifactStore, s: _Sampling) -> dict[str, Any]:
    """``sample_sharded``'s arguments but the generate function and folders: ids, prompts, the
    samples' constant columns (meta), seed, shard_size and earlier samples of this model and
    settings; plus the count of truncated prompts. Loads a tokenizer, not the model."""
    side, data = SAMPLING_SIDES[s.stage], s.upstream[0]
    sp = cfg[side].sampling
    tokenizer = (openai_api.CharTokens() if s.spec.backend == "openai"
                 else models.load_tokenizer(models.resolve_model_path(s.spec.model, s.spec.cache_dir),
                                            s.spec.revision, s.spec.trust_remote_code))
    rows = _rows(data, "unlabeled")
    prompts, truncated = _prompts(rows, data, cfg[side].prompt, tokenizer)
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

    return _materialize(store, s.stage, s.config, list(s.upstream), build, force)


def sampling_jobs(cfg: DictConfig, store: ArtifactStore, stage: str, data: Artifact, sft: Artifact | None = None,
                  force: bool = False, torch_threads: int = 0) -> list[ShardJob]:
    """The shards of ``stage`` (sample_teacher or sample_student) that are not committed yet, as jobs
    another process can run (``samplers.run_shard_job``); none when the artifact exists (unless
    ``force``). Running them all and then ``run_<stage>`` with the same arguments commits the
    artifact from the shards, exactly as if the stage had sampled them itself."""
    s = _sampling(cfg, stage, data, sft)
    key = _key(stage, s.config, list(s.upstream))
    if not force and store.get(stage, key) is not None:
        return []
    work = store.work_dir(stage, key).resolve()
    work.mkdir(parents=True, exist_ok=True)
    inputs = _sampling_inputs(cfg, store, s)
    plan = plan_shards(inputs["ids"], inputs["prompts"], inputs["seed"], inputs["shard_size"], inputs["earlier"])
    return [ShardJob(s.spec, shard, tuple(inputs["meta"].items()), str(work), torch_threads)
            for shard in plan.shards if not shard.path(work).is_file()]


def run_sample_teacher(cfg: DictConfig, store: ArtifactStore, data: Artifact, force: bool = False) -> Artifact:
    """Teacher outputs y_T for every unlabeled prompt (``samples.parquet``), sharded and resumable.

    ``teacher.sampling.backend``: hf and vllm load ``teacher.model`` here (auto: vllm when installed);
    openai samples an OpenAI-compatible endpoint (``teacher.sampling.api``) and loads nothing, not
    even a tokenizer: prompts are truncated to ``prompt.max_tokens`` units of
    ``openai_api.CHARS_PER_TOKEN`` characters. Shards already committed (a killed run, or
    ``sampling_jobs`` run elsewhere) are kept.
    """
    return _run_sampling(cfg, store, _sampling(cfg, "sample_teacher", data), force)


def run_sample_student(cfg: DictConfig, store: ArtifactStore, data: Artifact, sft: Artifact,
                       force: bool = False) -> Artifact:
    """SFT-student outputs y_S for every unlabeled prompt (``samples.parquet``), sharded and resumable
    (``student.sampling.backend``: hf, vllm or auto)."""
    return _run_sampling(cfg, store, _sampling(cfg, "sample_student", data, sft), force)


def run_build_pairs(cfg: DictConfig, store: ArtifactStore, data: Artifact, teacher_samples: Artifact,
                    student_samples: Artifact, force: bool = False) -> Artifact:
    """Pseudo-preference pairs (chosen = teacher text, rejected = student text) in ``pairs.parquet``,
    from the first ceil(``pairs.unlabeled_fraction`` x n) unlabeled prompts (split order)."""
    fraction = cfg.pairs.unlabeled_fraction
    if not 0 < fraction <= 1:
        raise ValueError(f"pairs.unlabeled_fraction={fraction} must be in (0, 1]")
    config = config_slice(cfg, ["pairs"])
    if fraction == 1:  # the key of a build over every prompt is what it was before fractions existed
        config["pairs"].pop("unlabeled_fraction")

    def build(out: Path, work: Path) -> dict[str, Any]:
        unlabeled = _rows(data, "unlabeled")
        unlabeled = unlabeled.head(prompts_used(fraction, len(unlabeled)))
        used = set(unlabeled["id"])
        teacher, student = (pd.read_parquet(a.file("samples.parquet")) for a in (teacher_samples, student_samples))
        pairs, stats = build_pairs(teacher[teacher["id"].isin(used)], student[student["id"].isin(used)],
                                   dict(zip(unlabeled["id"], unlabeled["reference"])), cfg.pairs.min_chars)
        pq.write_table(pa.Table.from_pandas(pairs, schema=PAIRS_SCHEMA, preserve_index=False), out / "pairs.parquet")
        return {**stats, "rows": len(pairs), "unlabeled_prompts": len(unlabeled)}

    return _materialize(store, "build_pairs", config, [data, teacher_samples, student_samples], build, force)


# What dpkd and token_kd read from the teacher beyond its text; the other losses need only y_T.
TEACHER_NEEDS = {"dpkd": "sequence log-probs of y_T and y_S (scored once by the score_pairs stage)",
                 "token_kd": "next-token distributions (the teacher runs next to the student in calibrate)"}


def _text_only_losses() -> str:
    return ", ".join(name for name in train.LOSS_NAMES if name not in TEACHER_NEEDS)


def check_train_loss(cfg: DictConfig) -> None:
    """Fail fast on a ``train.loss`` this config cannot train: an unknown name (or ``train.kd_divergence``,
    ``train.pair_forward``, ``train.launch.strategy``), shared_prefix with gradient checkpointing, or dpkd /
    token_kd with a teacher behind an API, whose log-probs are not available."""
    loss, backend = cfg.train.loss, cfg.teacher.sampling.backend
    train.check_loss(loss, cfg.train.kd_divergence)
    parallel.check_strategy(cfg.train.launch.strategy)
    train.check_pair_forward(cfg.train.pair_forward, cfg.train.optim.gradient_checkpointing)
    if loss in TEACHER_NEEDS and backend == "openai":  # hf, vllm and auto sample a local teacher model
        raise ValueError(f"train.loss={loss} needs the teacher's {TEACHER_NEEDS[loss]}, but "
                         f"teacher.sampling.backend={backend} gives only its text: set teacher.sampling.backend=hf "
                         f"with teacher.model a local or hub model that shares the student's tokenizer, or choose a "
                         f"loss that needs only the teacher's text ({_text_only_losses()})")


def _check_teacher_tokenizer(cfg: DictConfig, student_tokenizer: Any) -> None:
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
                         f"that needs only the teacher's text ({_text_only_losses()})")


def run_score_pairs(cfg: DictConfig, store: ArtifactStore, pairs: Artifact, sft: Artifact,
                    force: bool = False) -> Artifact:
    """Per-pair scores under frozen models, computed once (``scores.parquet``, ``scoring.SCORES_SCHEMA``,
    one row per pair, joined to pairs.parquet on id and sample_index): the scored token counts of y_T and
    y_S always; their summed log-probs under the SFT student (the reference policy) when ``train.loss``
    is dpo or ipo, under the teacher when it is dpkd (the teacher must share the student's tokenizer).

    Always in the DAG, but it loads a model only for those losses; for the others it only tokenizes the
    pairs (under a second). The key holds what it computes, not the loss name, so losses that need the
    same scores share one artifact and a change of beta or loss leaves it alone.
    """
    check_train_loss(cfg)
    o = cfg.train.optim
    scorers = list(train.STORED_SCORERS.get(cfg.train.loss, ()))
    config: dict[str, Any] = {"train.optim.max_seq_len": o.max_seq_len, "scorers": scorers}
    if scorers:
        config["train.optim.bf16"] = o.bf16  # scored in the precision training runs in
    if "teacher" in scorers:
        config["teacher"] = _teacher_identity(cfg)

    def build(out: Path, work: Path) -> dict[str, Any]:
        tokenizer = models.load_tokenizer(str(sft.file(MODEL_DIR)))
        if "teacher" in scorers:
            _check_teacher_tokenizer(cfg, tokenizer)
        frame = pd.read_parquet(pairs.file("pairs.parquet"))
        loaders = {"reference": lambda: _load_artifact_model(sft, cfg)[0], "teacher": lambda: _load_teacher(cfg)[0]}
        frozen = {name: loaders[name]() for name in scorers}
        scores = scoring.score_pairs(frame, encode_pairs(frame, tokenizer, o.max_seq_len), tokenizer.pad_token_id,
                                     frozen, 2 * o.batch_size, o.bf16)
        pq.write_table(pa.Table.from_pandas(scores, schema=scoring.SCORES_SCHEMA, preserve_index=False),
                       out / "scores.parquet")
        stats: dict[str, Any] = {"rows": len(scores), "scorers": scorers}
        for name in scorers:
            chosen, rejected = train.stored_columns(name)
            stats[f"{name}_logp_per_token"] = {
                "chosen": float(scores[chosen].sum() / scores["chosen_scored_tokens"].sum()),
                "rejected": float(scores[rejected].sum() / scores["rejected_scored_tokens"].sum())}
        return stats

    return _materialize(store, "score_pairs", config, [pairs, sft], build, force)


def _pairs_with_scores(pairs: Artifact, scores: Artifact) -> pd.DataFrame:
    """pairs.parquet joined with the score_pairs columns, one row per pair."""
    frame = pd.read_parquet(pairs.file("pairs.parquet"))
    if frame.empty:
        raise ValueError(f"{pairs.file('pairs.parquet')}: no pairs to train on")
    stored = pd.read_parquet(scores.file("scores.parquet"))
    joined = frame.merge(stored, on=["id", "sample_index"], how="left", validate="one_to_one")
    if len(stored) != len(frame) or joined["chosen_scored_tokens"].isna().any():
        raise ValueError(f"{scores.file('scores.parquet')} does not hold exactly one row per pair of "
                         f"{pairs.file('pairs.parquet')}")
    return joined


def run_calibrate(cfg: DictConfig, store: ArtifactStore, pairs: Artifact, sft: Artifact, scores: Artifact,
                  force: bool = False) -> Artifact:
    """Training of the SFT student on the pairs with ``train.loss`` (``train.LOSS_NAMES``; conf/base.yaml
    gives each one's equation): the PLaD calibration losses, the preference baselines (reading the
    score_pairs columns they need) and the SeqKD / token-KD baselines (token_kd loads the teacher here)."""
    check_train_loss(cfg)
    token_kd = cfg.train.loss == "token_kd"
    config = {**_training_slice(cfg, ["train"]), **({"teacher": _teacher_identity(cfg)} if token_kd else {})}

    def build(out: Path, work: Path) -> dict[str, Any]:
        frame = _pairs_with_scores(pairs, scores)
        if cfg.train.launch.nproc > 1:
            return calibrate_worker.run(cfg, frame, sft.file(MODEL_DIR), out, work, log)
        return calibrate_student(cfg, frame, sft.file(MODEL_DIR), out, work)

    return _materialize(store, "calibrate", config, [pairs, sft, scores], build, force)


def calibrate_student(cfg: DictConfig, frame: pd.DataFrame, student_dir: Path, out: Path, work: Path) -> dict[str, Any]:
    """``run_calibrate``'s training, in this process or as one rank under torchrun (``calibrate_worker``):
    the student from ``student_dir`` trained on ``frame``, resuming from ``work/checkpoints``; rank 0
    writes ``model/`` and ``train_log.parquet`` into ``out``. Returns the training stats."""
    student, tokenizer = models.load_model(str(student_dir), cfg.cache_dir, device=cfg.device)
    teacher = None
    if cfg.train.loss == "token_kd":
        _check_teacher_tokenizer(cfg, tokenizer)
        teacher = _load_teacher(cfg)[0].requires_grad_(False)
        sizes = [m.get_output_embeddings().weight.shape[0] for m in (student, teacher)]
        if sizes[0] != sizes[1]:
            raise ValueError(f"train.loss=token_kd compares next-token distributions, but the student's LM head "
                             f"has {sizes[0]} outputs and teacher.model={cfg.teacher.model}'s {sizes[1]}")
    history, stats = train_on_pairs(student, tokenizer, frame, cfg.train, teacher, work / CHECKPOINTS)
    weights, _ = parallel.full_state(student)  # on every rank: under FSDP it gathers the shards
    if parallel.ranks().rank == 0:
        models.save_model(student, tokenizer, out / MODEL_DIR, weights)
        _write_log(history, out / "train_log.parquet")
    return stats


def _generate_and_score(model: Any, tokenizer: Any, system: str, dev: pd.DataFrame, data: Artifact,
                        prompt_cfg: DictConfig, cfg: DictConfig) -> pd.DataFrame:
    """Greedy outputs of one model on the dev rows with per-row ROUGE F1: system, id, text, output_tokens, rouge*."""
    models.cast(model, cfg.eval.dtype)
    prompts, _ = _prompts(dev, data, prompt_cfg, tokenizer)
    gens = hf.generate(model, tokenizer, prompts, temperature=0.0, max_new_tokens=cfg.eval.max_new_tokens,
                       batch_size=cfg.eval.batch_size, stop=list(cfg.eval.stop), desc=f"evaluate {system}")
    texts = [g.text for g in gens]
    scores = eval_lib.rouge_f1(texts, list(dev["reference"]), cfg.eval.rouge_stemmer)
    return pd.DataFrame({"system": system, "id": dev["id"], "text": texts,
                         "output_tokens": [g.output_tokens for g in gens], **scores})


CALIBRATED_SYSTEMS = ("sft", "plad")  # the students whose sequence likelihood calibration is measured


@torch.inference_mode()
def _calibration_samples(model: Any, tokenizer: Any, system: str, dev: pd.DataFrame, data: Artifact,
                         cfg: DictConfig) -> pd.DataFrame:
    """K = eval.calibration_samples sampled outputs per dev prompt (the first eval.calibration_rows
    rows when > 0) from one student, each with the student's own log-likelihood (summed and per
    token, EOS included, as in calibration training; in eval.dtype) and its ROUGE-L F1 against the
    reference: system, id, sample_index, text, output_tokens, scored_tokens, logp_sum, logp_mean, rougeL."""
    e = cfg.eval
    models.cast(model, e.dtype)
    model.eval()
    dev = dev.head(e.calibration_rows) if e.calibration_rows > 0 else dev
    prompts, _ = _prompts(dev, data, cfg.student.prompt, tokenizer)
    gens = hf.generate(model, tokenizer, prompts, n=e.calibration_samples, temperature=e.calibration_temperature,
                       top_p=e.calibration_top_p, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
                       seed=e.seed, stop=list(e.stop), desc=f"calibration samples {system}")
    max_len = cfg.student.prompt.max_tokens + e.max_new_tokens + 8  # long enough that nothing is cut
    items = [train.encode(tokenizer, prompts[g.prompt_index], g.text, max_len) for g in gens]
    logp_sum = scoring.sequence_scores(model, items, tokenizer.pad_token_id, e.batch_size)
    scored = [scored_tokens(item) for item in items]
    ids, references = list(dev["id"]), list(dev["reference"])
    texts = [g.text for g in gens]
    quality = eval_lib.rouge_f1(texts, [references[g.prompt_index] for g in gens], e.rouge_stemmer)["rougeL"]
    return pd.DataFrame({"system": system, "id": [ids[g.prompt_index] for g in gens],
                         "sample_index": [g.sample_index for g in gens], "text": texts,
                         "output_tokens": [g.output_tokens for g in gens], "scored_tokens": scored,
                         "logp_sum": logp_sum, "logp_mean": [t / max(c, 1) for t, c in zip(logp_sum, scored)],
                         "rougeL": list(quality)})


# One model's dev outputs are an artifact of their own (``run_dev_outputs``), keyed by the model and
# these eval keys only, so every evaluation and table that shows the same model reuses them.
GENERATION_SLICE = ["eval.max_new_tokens", "eval.batch_size", "eval.stop", "eval.dtype", "eval.rouge_stemmer"]
CALIBRATION_SLICE = ["eval.calibration_samples", "eval.calibration_rows", "eval.calibration_temperature",
                     "eval.calibration_top_p", "eval.seed"]
VERSIONS["dev_outputs"] = 1


def _calibration_k(cfg: DictConfig) -> int:
    """``eval.calibration_samples``, checked: 0 (off) or at least 2 samples to rank per prompt."""
    k = cfg.eval.calibration_samples
    if k == 1 or k < 0:
        raise ValueError(f"eval.calibration_samples={k}: use 0 (off) or at least 2 samples to rank per prompt")
    return k


def run_dev_outputs(cfg: DictConfig, store: ArtifactStore, data: Artifact, model: Artifact | None = None,
                    force: bool = False, on_calibration: Callable[[], None] | None = None) -> Artifact:
    """One model's outputs on the dev split, cached apart from the evaluations that read them.

    ``model`` None is the teacher (keyed by its fingerprint and ``teacher.prompt``); otherwise a student
    artifact, ``sft_student`` or ``calibrate`` (keyed by its artifact key and ``student.prompt``), which
    also gets ``eval.calibration_samples`` scored samples per prompt when that is > 0. Writes
    generations.parquet (id, text, output_tokens, rouge1, rouge2, rougeL: greedy, ROUGE F1 against the
    references) and, for a student with K > 0, calibration_samples.parquet (``_calibration_samples``'s
    columns). Neither has a system column: one model is "plad" in an evaluation and "seqkd" in a table,
    so readers name it (``dev_frames``). ``on_calibration()`` is called as calibration sampling starts."""
    teacher = model is None
    k = _calibration_k(cfg)
    sampled = not teacher and k > 0
    config = {**config_slice(cfg, GENERATION_SLICE + (CALIBRATION_SLICE if sampled else [])),
              **({"teacher": _teacher_identity(cfg), **config_slice(cfg, ["teacher.prompt"])} if teacher
                 else config_slice(cfg, ["student.prompt"]))}
    upstream = [data] if teacher else [data, model]
    label = "teacher" if teacher else model.stage

    def build(out: Path, work: Path) -> dict[str, Any]:
        dev = _rows(data, "dev")
        loaded, prompt_cfg = ((_load_teacher(cfg), cfg.teacher.prompt) if teacher
                              else (_load_artifact_model(model, cfg), cfg.student.prompt))
        started = time.perf_counter()
        generations = _generate_and_score(*loaded, label, dev, data, prompt_cfg, cfg).drop(columns="system")
        generations.to_parquet(out / "generations.parquet", index=False)
        seconds = {"generate": round(time.perf_counter() - started, 1)}
        stats: dict[str, Any] = {"rows": len(generations), "rougeL": float(generations["rougeL"].mean())}
        if sampled:
            if on_calibration:
                on_calibration()
            started = time.perf_counter()
            samples = _calibration_samples(*loaded, label, dev, data, cfg).drop(columns="system")
            samples.to_parquet(out / "calibration_samples.parquet", index=False)
            seconds["calibration"] = round(time.perf_counter() - started, 1)
            stats["calibration_samples"] = len(samples)
        return {**stats, "seconds": seconds}

    return _materialize(store, "dev_outputs", config, upstream, build, force)


def dev_frames(outputs: Artifact, system: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """A dev_outputs artifact's generations and calibration samples (None when it has none), each
    with ``system`` as its first column."""
    def named(path: Path) -> pd.DataFrame:
        frame = pd.read_parquet(path)
        return frame.assign(system=system)[["system", *frame.columns]]
    samples = outputs.file("calibration_samples.parquet")
    return named(outputs.file("generations.parquet")), named(samples) if samples.is_file() else None


def _judge_prompt(cfg: DictConfig) -> judge_lib.JudgePrompt:
    spec = data_lib.task_spec(cfg.data.task)
    return judge_lib.JudgePrompt.load(judge_lib.prompt_path(cfg.eval.judge.prompt), spec.fields)


def _judge_identity(cfg: DictConfig) -> dict[str, Any]:
    """``eval.judge`` as it enters evaluate's key: the judge model's identity (its weights, or an
    endpoint's address and served name), the prompt file's text, and what changes the verdicts."""
    j = cfg.eval.judge
    if not j.enabled:
        return {"enabled": False}
    if j.backend == "openai":
        model = _api_identity(openai_api.ApiSettings.from_config(j.api).check("eval.judge.api"))
    elif j.backend == "hf":
        model = models.model_fingerprint(j.model)
    else:
        raise ValueError(f"eval.judge.backend='{j.backend}' is not a judge backend; use hf or openai")
    return {"enabled": True, "backend": j.backend, "model": model, "prompt": j.prompt,
            "prompt_text": _judge_prompt(cfg).text, "max_tokens": j.max_tokens, "rows": j.rows}


VERSIONS["judgments"] = 1


def run_judgments(cfg: DictConfig, store: ArtifactStore, data: Artifact, outputs: dict[str, Artifact],
                  force: bool = False, progress: Callable[[float], None] | None = None) -> Artifact:
    """The judge's verdicts (``eval.judge``) on named dev outputs (``run_dev_outputs`` artifacts): each
    system against the human reference and against the one named "sft", in both orders, every row's
    judgments sharing one prefix pass (``judgments.parquet``, ``judge.JUDGMENT_COLUMNS``). Keyed by the
    judge and the names and keys of the outputs, so a table re-rendered with the same systems reuses it,
    as does an evaluation of the same models. ``progress(fraction)``, when given, follows the judge."""
    if not cfg.eval.judge.enabled:
        raise ValueError("run_judgments needs eval.judge.enabled=true")
    config = {"judge": _judge_identity(cfg), "systems": {name: a.key for name, a in outputs.items()}}

    def build(out: Path, work: Path) -> dict[str, Any]:
        j, e = cfg.eval.judge, cfg.eval
        dev = _rows(data, "dev")
        generations = pd.concat([dev_frames(a, name)[0] for name, a in outputs.items()], ignore_index=True)
        started = time.perf_counter()
        judge, counter = judge_lib.make_judge(j, cfg.cache_dir, cfg.device, e.dtype, e.seed)
        prompt = _judge_prompt(cfg)
        prefixes = prompt.fill_prefixes(dev.head(j.rows) if j.rows > 0 else dev, counter, j.max_tokens,
                                        data_lib.task_spec(cfg.data.task))
        judgments = judge_lib.judge_systems(judge, prompt, prefixes, dict(zip(dev["id"], dev["reference"])),
                                            generations, progress)
        judgments.to_parquet(out / "judgments.parquet", index=False)
        return {"judgments": len(judgments), "rows": int(judgments["id"].nunique()),
                "seconds": round(time.perf_counter() - started, 1)}

    return _materialize(store, "judgments", config, [data], build, force)


def run_evaluate(cfg: DictConfig, store: ArtifactStore, data: Artifact, sft: Artifact, calibrated: Artifact,
                 force: bool = False, progress: ProgressCallback | None = None) -> Artifact:
    """Greedy outputs of each system on the dev split scored with ROUGE-1/2/L F1 against the human
    references, with bootstrap CIs, the paired PLaD-vs-SFT test, the students' calibration
    (``eval.calibration_samples`` samples per prompt), the judge's win rates against the reference
    and the SFT student (``eval.judge``) and every metric by reference-length bucket. The outputs and
    the verdicts are artifacts of their own (``run_dev_outputs``, ``run_judgments``), built here or reused.

    Writes generations.parquet, calibration_samples.parquet, judgments.parquet, metrics.json
    (``plad_core.evaluate.evaluation_metrics``), report.md, report.html, plots/ and results.md
    (the report's summary, published by the flow). ``progress(fraction, message)``, when given, is
    called as each system, the calibration sampling and the judge advance (``plad_core.progress``)."""
    systems = list(cfg.eval.systems)
    config = {**config_slice(cfg, ["eval", "student.prompt"]),
              **({"teacher": _teacher_identity(cfg), **config_slice(cfg, ["teacher.prompt"])}
                 if "teacher" in systems else {})}
    config["eval"] = {**config["eval"], "judge": _judge_identity(cfg)}
    upstream = [data, sft, calibrated]
    key = _key("evaluate", config, upstream)
    k = _calibration_k(cfg)

    def build(out: Path, work: Path) -> dict[str, Any]:
        dev = _rows(data, "dev")
        models_of = {"teacher": None, "sft": sft, "plad": calibrated}
        unknown = [s for s in systems if s not in models_of]
        if unknown:
            raise ValueError(f"eval.systems has unknown names {unknown}; known: {list(models_of)}")
        e = cfg.eval
        steps = Steps([step for s in systems for step in
                       [f"generate {s}", *([f"calibration samples {s}"] if k and s in CALIBRATED_SYSTEMS else [])]]
                      + (["judge"] if e.judge.enabled else []) + ["metrics and report"], progress)
        frames, sampled, outputs = [], [], {}
        seconds = {"generate": 0.0, "calibration": 0.0}  # spent building the dev outputs, here or by an earlier run
        for system in systems:
            steps.report(f"generate {system}")
            outputs[system] = run_dev_outputs(cfg, store, data, models_of[system],
                                              on_calibration=lambda s=system: steps.report(f"calibration samples {s}"))
            generated, samples = dev_frames(outputs[system], system)
            frames.append(generated)
            if samples is not None:
                sampled.append(samples)
            for name, value in outputs[system].manifest["stats"]["seconds"].items():
                seconds[name] += value
        generations = pd.concat(frames, ignore_index=True)
        judgments, judged = None, None
        if e.judge.enabled:
            steps.report("judge")
            judged = run_judgments(cfg, store, data, outputs, force, steps.within("judge"))  # force re-judges
            judgments = pd.read_parquet(judged.file("judgments.parquet"))
            seconds["judge"] = judged.manifest["stats"]["seconds"]  # here or by an earlier run, as the dev outputs
            shutil.copyfile(judged.file("judgments.parquet"), out / "judgments.parquet")
        steps.report("metrics and report")
        started = time.perf_counter()
        samples = pd.concat(sampled, ignore_index=True) if sampled else pd.DataFrame(
            columns=["system", "id", "sample_index", "text", "logp_mean", "rougeL"])
        metrics = eval_lib.evaluation_metrics(generations, dev[["id", "reference"]], samples, list(e.length_buckets),
                                              e.n_resamples, e.seed, e.calibration_bins, judgments)
        metrics["settings"].update(calibration_samples=k, calibration_temperature=e.calibration_temperature,
                                   calibration_top_p=e.calibration_top_p)
        if judgments is not None:
            metrics["settings"]["judge"] = {
                "backend": e.judge.backend, "model": e.judge.api.model if e.judge.backend == "openai" else e.judge.model,
                "prompt": e.judge.prompt, "rows": int(judgments["id"].nunique()), "seconds": round(seconds["judge"], 1)}
        generations.to_parquet(out / "generations.parquet", index=False)
        samples.to_parquet(out / "calibration_samples.parquet", index=False)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
        template = cfg.student.prompt.template
        references = dev[["id", "reference"]].assign(
            prompt=[data_lib.render_prompt(r, template, [], "") for r in dev.to_dict("records")])
        log_path = calibrated.file("train_log.parquet")
        keys = {"evaluate": key, **{a.stage: a.key for a in upstream},
                **{f"dev_outputs ({s})": a.key for s, a in outputs.items()},
                **({"judgments": judged.key} if judged else {}),
                **{f"{s} (calibrate's upstream)": v for s, v in calibrated.manifest.get("upstream", {}).items()
                   if s != "sft_student"}}
        summary = report.write_report(
            out, metrics, generations, references, pd.read_parquet(log_path) if log_path.is_file() else None,
            {"keys": keys, "config": config, "report_path": str(store.path("evaluate", key) / "report.html")},
            title=f"PLaD evaluation: {cfg.name}, dev split", n_examples=e.report_examples)
        (out / "results.md").write_text(summary)
        seconds["metrics_and_report"] = time.perf_counter() - started
        steps.done()
        judge = metrics["judge"]
        return {"metrics": metrics["systems"], "paired": metrics["paired"],
                "calibration": {s: {m: c[m] for m in ("spearman", "ece", "prompts_used", "prompts_skipped")}
                                for s, c in metrics["calibration"].items()},
                "judge": {"consistency": judge["consistency"], "a_rate": judge["a_rate"],
                          "win_rate": {o: {s: w["win_rate"] for s, w in by.items()} for o, by in judge["vs"].items()}}
                if judge else None,
                "length_buckets": metrics["length_buckets"]["edges"], "dev_rows": len(dev),
                "seconds": {name: round(v, 1) for name, v in seconds.items()}}

    return _materialize(store, "evaluate", config, upstream, build, force)


def run_promote(cfg: DictConfig, store: ArtifactStore, data: Artifact, calibrated: Artifact, evaluation: Artifact,
                run_id: str | None = None) -> dict[str, Any]:
    """Champion/challenger: the new PLaD student replaces the champion only if it beats it on the dev
    split's ``promotion.metric`` by more than the bootstrap CI of the paired difference.

    Not an artifact: it reads and appends to the registry (``plad history``). The champion is
    re-scored on the current dev rows, so nights with new dev data compare like with like.
    """
    p = cfg.promotion
    registry = Registry(Path(p.registry) if p.registry else store.root / "registry.sqlite")
    generations = pd.read_parquet(evaluation.file("generations.parquet"))
    challenger = generations[generations["system"] == "plad"].sort_values("id")
    champion = registry.champion(cfg.name)
    entry = {"run_id": run_id, "config": cfg.name, "metric": p.metric, "model_path": str(calibrated.file(MODEL_DIR)),
             "calibrate_key": calibrated.key, "evaluate_key": evaluation.key,
             "challenger_score": float(challenger[p.metric].mean())}
    if champion is None:
        decision = {"promoted": True, "reason": "no champion yet"}
    elif champion["calibrate_key"] == calibrated.key:
        decision = {"promoted": False, "reason": "same model as the champion",
                    "champion_score": entry["challenger_score"]}
    else:
        model, tokenizer = models.load_model(champion["model_path"], cfg.cache_dir, device=cfg.device)
        dev = _rows(data, "dev")
        incumbent = _generate_and_score(model, tokenizer, "champion", dev, data, cfg.student.prompt, cfg).sort_values("id")
        decision = promotion_decision(list(challenger[p.metric]), list(incumbent[p.metric]), p.n_resamples, p.seed)
    entry.update(decision)
    registry.record(entry)
    log.info("promotion: %s (%s)", "promoted" if entry["promoted"] else "kept the champion", entry["reason"])
    return entry


RUNNERS: dict[str, Callable[..., Artifact]] = {
    "prepare_data": run_prepare_data, "init_student": run_init_student, "sft_student": run_sft_student,
    "sample_teacher": run_sample_teacher, "sample_student": run_sample_student, "build_pairs": run_build_pairs,
    "score_pairs": run_score_pairs, "calibrate": run_calibrate, "evaluate": run_evaluate,
}


def run_stage(name: str, cfg: DictConfig, store: ArtifactStore, force: frozenset[str] = frozenset(),
              done: dict[str, Artifact] | None = None) -> Artifact:
    """Materialize ``name`` and, first, whatever it depends on (reused when already in the store).

    Stages in ``force`` are rebuilt even when their artifact exists.
    """
    if name not in RUNNERS:
        raise KeyError(f"unknown stage '{name}'; stages: {', '.join(RUNNERS)}")
    done = {} if done is None else done
    if name not in done:
        upstream = [run_stage(dep, cfg, store, force, done) for dep in DEPENDENCIES[name]]
        done[name] = RUNNERS[name](cfg, store, *upstream, force=name in force)
    return done[name]
