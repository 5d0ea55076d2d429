"""The pipeline's stages as plain functions: ``run_<stage>(cfg, store, *upstream) -> Artifact``.

Each stage names the config paths it reads (its slice) and a code version; with the upstream
artifact keys these make its artifact key (see ``plad_core.artifacts``). Nothing here knows Prefect:
``flows/distill.py`` wraps these functions as tasks, and ``run_stage`` below resolves the same DAG
for plain Python callers and ``plad stage``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig

from plad_core import data as data_lib
from plad_core import evaluate as eval_lib
from plad_core import models, report, train
from plad_core.artifacts import Artifact, ArtifactStore, artifact_key, sha256_file
from plad_core.config import config_slice
from plad_core.pair_training import train_on_pairs
from plad_core.pairs import PAIRS_SCHEMA, build_pairs
from plad_core.registry import Registry, promotion_decision
from plad_core.sampling import check_backend, hf, openai_api
from plad_core.sampling.shards import sample_sharded

log = logging.getLogger("plad.stages")

DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "prepare_data": (),
    "init_student": ("prepare_data",),
    "sft_student": ("prepare_data", "init_student"),
    "sample_teacher": ("prepare_data",),
    "sample_student": ("prepare_data", "sft_student"),
    "build_pairs": ("prepare_data", "sample_teacher", "sample_student"),
    "calibrate": ("build_pairs", "sft_student"),
    "evaluate": ("prepare_data", "sft_student", "calibrate"),
}

# Bump a stage's version when its code changes what it produces: its artifacts and all downstream ones rebuild.
VERSIONS = {name: 1 for name in DEPENDENCIES}
VERSIONS["evaluate"] = 2  # v2: bootstrap CIs, paired test, calibration, length buckets, report.html

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
        config = {"teacher": _teacher_identity(cfg), **config_slice(cfg, ["student.keep_layers", "student.heal"])}
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
    config = config_slice(cfg, ["sft", "student.prompt"])

    def build(out: Path, work: Path) -> dict[str, Any]:
        student, tokenizer = _load_artifact_model(init, cfg)
        labeled = _rows(data, "labeled")
        prompts, truncated = _prompts(labeled, data, cfg.student.prompt, tokenizer)
        items = [train.encode(tokenizer, p, s, cfg.sft.max_seq_len) for p, s in zip(prompts, labeled["reference"])]
        batches = [train.collate(b, tokenizer.pad_token_id) for b in
                   train.length_grouped_batches(items, lambda e: len(e.ids), cfg.sft.batch_size, cfg.sft.seed)]
        history = train.train_loop(student, batches, train.sft_step(student), **train.optim_kwargs(cfg.sft),
                                   desc="sft student")
        models.save_model(student, tokenizer, out / MODEL_DIR)
        _write_log(history, out / "train_log.parquet")
        return {"examples": len(items), "truncated_prompts": truncated, "steps": len(history),
                "final_loss": history[-1]["loss"] if history else None}

    return _materialize(store, "sft_student", config, [data, init], build, force)


def _sampling_slice(cfg: DictConfig, side: str) -> dict[str, Any]:
    """``<side>.prompt`` and ``<side>.sampling`` as they enter the sampling artifact's key.

    With the hf backend, ``backend`` and ``api`` are left out (hf keys are what they were before
    there were backends). With openai, the endpoint's identity is in the key's ``teacher`` entry;
    dtype, batch_size and the api's throughput and retry knobs change how fast, not what, so they are out.
    """
    out = config_slice(cfg, [f"{side}.prompt", f"{side}.sampling"])
    sampling = dict(out[f"{side}.sampling"])
    backend = sampling.pop("backend")
    sampling.pop("api")
    if backend != "hf":
        sampling = {k: v for k, v in sampling.items() if k not in ("dtype", "batch_size")}
    out[f"{side}.sampling"] = sampling
    return out


def _api_identity(api: openai_api.ApiSettings) -> dict[str, Any]:
    """A teacher behind an API is known by its endpoint and served name (its weights are not visible)."""
    return {"backend": "openai", "base_url": openai_api.api_root(api.base_url), "model": api.model,
            "mode": api.mode, "prompt_truncation": f"{openai_api.CHARS_PER_TOKEN} characters per token"}


def _hf_sampler(sp: DictConfig, model: Any, tokenizer: Any, desc: str) -> Callable[[list[str], int], list[hf.Generation]]:
    models.cast(model, sp.dtype)

    def generate(batch_prompts: list[str], seed: int) -> list[hf.Generation]:
        return hf.generate(model, tokenizer, batch_prompts, n=sp.n, temperature=sp.temperature, top_p=sp.top_p,
                           max_new_tokens=sp.max_new_tokens, batch_size=sp.batch_size, seed=seed, stop=list(sp.stop),
                           desc=desc)
    return generate


def _api_sampler(sp: DictConfig, api: openai_api.ApiSettings, desc: str) -> Callable[[list[str], int], list[hf.Generation]]:
    def generate(batch_prompts: list[str], seed: int) -> list[hf.Generation]:
        return openai_api.generate(batch_prompts, api, n=sp.n, temperature=sp.temperature, top_p=sp.top_p,
                                   max_new_tokens=sp.max_new_tokens, seed=seed, stop=list(sp.stop), desc=desc)
    return generate


def _sample(side: DictConfig, tokenizer: Any, generate: Callable[[list[str], int], list[hf.Generation]],
            backend: str, model_name: str, data: Artifact, earlier: list[Artifact], out: Path,
            work: Path) -> dict[str, Any]:
    rows = _rows(data, "unlabeled")
    prompts, truncated = _prompts(rows, data, side.prompt, tokenizer)
    sp = side.sampling
    meta = {"backend": backend, "model": model_name, "temperature": sp.temperature, "top_p": sp.top_p,
            "max_new_tokens": sp.max_new_tokens}
    previous = pd.concat([pd.read_parquet(a.file("samples.parquet")) for a in earlier]) if earlier else None
    stats = sample_sharded(list(rows["id"]), prompts, generate, meta, sp.seed, sp.shard_size, work,
                           out / "samples.parquet", previous)
    return {**stats, "truncated_prompts": truncated, "backend": backend}


def run_sample_teacher(cfg: DictConfig, store: ArtifactStore, data: Artifact, force: bool = False) -> Artifact:
    """Teacher outputs y_T for every unlabeled prompt (``samples.parquet``), sharded and resumable.

    ``teacher.sampling.backend``: hf loads ``teacher.model`` here; openai samples an OpenAI-compatible
    endpoint (``teacher.sampling.api``) and loads nothing, not even a tokenizer: prompts are
    truncated to ``prompt.max_tokens`` units of ``openai_api.CHARS_PER_TOKEN`` characters.
    """
    sp = cfg.teacher.sampling
    backend = check_backend(sp.backend, "teacher.sampling")
    api = openai_api.ApiSettings.from_config(sp.api).check("teacher.sampling.api") if backend == "openai" else None
    config = {"teacher": _api_identity(api) if api else _teacher_identity(cfg), **_sampling_slice(cfg, "teacher")}

    def build(out: Path, work: Path) -> dict[str, Any]:
        earlier = store.find("sample_teacher", config, {})
        if api is not None:
            return _sample(cfg.teacher, openai_api.CharTokens(), _api_sampler(sp, api, f"sample {api.model}"),
                           backend, api.model, data, earlier, out, work)
        model, tokenizer = _load_teacher(cfg)
        return _sample(cfg.teacher, tokenizer, _hf_sampler(sp, model, tokenizer, f"sample {cfg.teacher.model}"),
                       backend, cfg.teacher.model, data, earlier, out, work)

    return _materialize(store, "sample_teacher", config, [data], build, force)


def run_sample_student(cfg: DictConfig, store: ArtifactStore, data: Artifact, sft: Artifact,
                       force: bool = False) -> Artifact:
    """SFT-student outputs y_S for every unlabeled prompt (``samples.parquet``), sharded and resumable."""
    check_backend(cfg.student.sampling.backend, "student.sampling", ("hf",),
                  "the student is the sft_student artifact, built by this pipeline and sampled in-process")
    config = _sampling_slice(cfg, "student")

    def build(out: Path, work: Path) -> dict[str, Any]:
        model, tokenizer = _load_artifact_model(sft, cfg)
        earlier = store.find("sample_student", config, {"sft_student": sft.key})
        name = f"sft_student:{sft.key}"
        return _sample(cfg.student, tokenizer, _hf_sampler(cfg.student.sampling, model, tokenizer, f"sample {name}"),
                       "hf", name, data, earlier, out, work)

    return _materialize(store, "sample_student", config, [data, sft], build, force)


def run_build_pairs(cfg: DictConfig, store: ArtifactStore, data: Artifact, teacher_samples: Artifact,
                    student_samples: Artifact, force: bool = False) -> Artifact:
    """Pseudo-preference pairs (chosen = teacher text, rejected = student text) in ``pairs.parquet``."""
    config = config_slice(cfg, ["pairs"])

    def build(out: Path, work: Path) -> dict[str, Any]:
        unlabeled = _rows(data, "unlabeled")
        pairs, stats = build_pairs(pd.read_parquet(teacher_samples.file("samples.parquet")),
                                   pd.read_parquet(student_samples.file("samples.parquet")),
                                   dict(zip(unlabeled["id"], unlabeled["reference"])), cfg.pairs.min_chars)
        pq.write_table(pa.Table.from_pandas(pairs, schema=PAIRS_SCHEMA, preserve_index=False), out / "pairs.parquet")
        return {**stats, "rows": len(pairs)}

    return _materialize(store, "build_pairs", config, [data, teacher_samples, student_samples], build, force)


def run_calibrate(cfg: DictConfig, store: ArtifactStore, pairs: Artifact, sft: Artifact,
                  force: bool = False) -> Artifact:
    """PLaD calibration of the SFT student on the pairs (``train.loss``: ranking, margin, simpo, cpo_hinge)."""
    config = config_slice(cfg, ["train"])
    if cfg.train.loss not in train.PAIR_LOSSES:
        raise ValueError(f"train.loss='{cfg.train.loss}' is not available; choose one of "
                         f"{sorted(train.PAIR_LOSSES)} (dpo, ipo and dpkd need reference log-probs, not wired yet)")

    def build(out: Path, work: Path) -> dict[str, Any]:
        student, tokenizer = _load_artifact_model(sft, cfg)
        frame = pd.read_parquet(pairs.file("pairs.parquet"))
        if frame.empty:
            raise ValueError(f"{pairs.file('pairs.parquet')}: no pairs to train on")
        history, stats = train_on_pairs(student, tokenizer, frame, cfg.train)
        models.save_model(student, tokenizer, out / MODEL_DIR)
        _write_log(history, out / "train_log.parquet")
        return stats

    return _materialize(store, "calibrate", config, [pairs, sft], build, force)


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
    order = sorted(range(len(items)), key=lambda i: len(items[i].ids))
    logp_sum, scored = [0.0] * len(items), [0] * len(items)
    for start in range(0, len(order), e.batch_size):
        chunk = order[start:start + e.batch_size]
        total, count = train.sequence_logprobs(model, train.collate([items[i] for i in chunk], tokenizer.pad_token_id))
        for i, t, c in zip(chunk, total.float().tolist(), count.tolist()):
            logp_sum[i], scored[i] = t, int(c)
    ids, references = list(dev["id"]), list(dev["reference"])
    texts = [g.text for g in gens]
    quality = eval_lib.rouge_f1(texts, [references[g.prompt_index] for g in gens], e.rouge_stemmer)["rougeL"]
    return pd.DataFrame({"system": system, "id": [ids[g.prompt_index] for g in gens],
                         "sample_index": [g.sample_index for g in gens], "text": texts,
                         "output_tokens": [g.output_tokens for g in gens], "scored_tokens": scored,
                         "logp_sum": logp_sum, "logp_mean": [t / max(c, 1) for t, c in zip(logp_sum, scored)],
                         "rougeL": list(quality)})


def run_evaluate(cfg: DictConfig, store: ArtifactStore, data: Artifact, sft: Artifact, calibrated: Artifact,
                 force: bool = False) -> Artifact:
    """Greedy outputs of each system on the dev split scored with ROUGE-1/2/L F1 against the human
    references, with bootstrap CIs, the paired PLaD-vs-SFT test, the students' calibration
    (``eval.calibration_samples`` samples per prompt) and every metric by reference-length bucket.

    Writes generations.parquet, calibration_samples.parquet, metrics.json
    (``plad_core.evaluate.evaluation_metrics``), report.md, report.html, plots/ and results.md
    (the report's summary, published by the flow)."""
    systems = list(cfg.eval.systems)
    config = {**config_slice(cfg, ["eval", "student.prompt"]),
              **({"teacher": _teacher_identity(cfg), **config_slice(cfg, ["teacher.prompt"])}
                 if "teacher" in systems else {})}
    upstream = [data, sft, calibrated]
    key = _key("evaluate", config, upstream)
    k = cfg.eval.calibration_samples
    if k == 1 or k < 0:
        raise ValueError(f"eval.calibration_samples={k}: use 0 (off) or at least 2 samples to rank per prompt")

    def build(out: Path, work: Path) -> dict[str, Any]:
        dev = _rows(data, "dev")
        loaders = {"teacher": (lambda: _load_teacher(cfg), cfg.teacher.prompt),
                   "sft": (lambda: _load_artifact_model(sft, cfg), cfg.student.prompt),
                   "plad": (lambda: _load_artifact_model(calibrated, cfg), cfg.student.prompt)}
        unknown = [s for s in systems if s not in loaders]
        if unknown:
            raise ValueError(f"eval.systems has unknown names {unknown}; known: {list(loaders)}")
        frames, sampled = [], []
        seconds = {"generate": 0.0, "calibration": 0.0}
        for system in systems:
            load, prompt_cfg = loaders[system]
            model, tokenizer = load()
            started = time.perf_counter()
            frames.append(_generate_and_score(model, tokenizer, system, dev, data, prompt_cfg, cfg))
            seconds["generate"] += time.perf_counter() - started
            if k and system in CALIBRATED_SYSTEMS:
                started = time.perf_counter()
                sampled.append(_calibration_samples(model, tokenizer, system, dev, data, cfg))
                seconds["calibration"] += time.perf_counter() - started
        started = time.perf_counter()
        generations = pd.concat(frames, ignore_index=True)
        samples = pd.concat(sampled, ignore_index=True) if sampled else pd.DataFrame(
            columns=["system", "id", "sample_index", "text", "logp_mean", "rougeL"])
        e = cfg.eval
        metrics = eval_lib.evaluation_metrics(generations, dev[["id", "reference"]], samples, list(e.length_buckets),
                                              e.n_resamples, e.seed, e.calibration_bins)
        metrics["settings"].update(calibration_samples=k, calibration_temperature=e.calibration_temperature,
                                   calibration_top_p=e.calibration_top_p)
        generations.to_parquet(out / "generations.parquet", index=False)
        samples.to_parquet(out / "calibration_samples.parquet", index=False)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
        template = cfg.student.prompt.template
        references = dev[["id", "reference"]].assign(
            prompt=[data_lib.render_prompt(r, template, [], "") for r in dev.to_dict("records")])
        log_path = calibrated.file("train_log.parquet")
        keys = {"evaluate": key, **{a.stage: a.key for a in upstream},
                **{f"{s} (calibrate's upstream)": v for s, v in calibrated.manifest.get("upstream", {}).items()
                   if s != "sft_student"}}
        summary = report.write_report(
            out, metrics, generations, references, pd.read_parquet(log_path) if log_path.is_file() else None,
            {"keys": keys, "config": config, "report_path": str(store.path("evaluate", key) / "report.html")},
            title=f"PLaD evaluation: {cfg.name}, dev split", n_examples=e.report_examples)
        (out / "results.md").write_text(summary)
        seconds["metrics_and_report"] = time.perf_counter() - started
        return {"metrics": metrics["systems"], "paired": metrics["paired"],
                "calibration": {s: {m: c[m] for m in ("spearman", "ece", "prompts_used", "prompts_skipped")}
                                for s, c in metrics["calibration"].items()},
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
    "calibrate": run_calibrate, "evaluate": run_evaluate,
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
