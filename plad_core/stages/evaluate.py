"""The evaluation stages: dev_outputs (one model's outputs on the dev split), judgments (the judge's
verdicts on named dev outputs) and evaluate (every system's metrics with CIs, and the report)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from omegaconf import DictConfig

from plad_core import data as data_lib
from plad_core.artifacts import Artifact, ArtifactStore
from plad_core.config import ConfigError
from plad_core.evaluation import dev_outputs, judge_validity
from plad_core.evaluation import judge as judge_lib
from plad_core.evaluation import metrics as eval_lib
from plad_core.progress import ProgressCallback, Steps
from plad_core.report import evaluation as report
from plad_core.sampling import openai_api
from plad_core.stages.checks import calibration_k
from plad_core.stages.curate import curation_stats
from plad_core.stages.inputs import (
    dev_frames,
    load_artifact_model,
    prompts_for,
    read_split,
)
from plad_core.stages.keys import (
    CALIBRATION_SLICE,
    GENERATION_SLICE,
    api_identity,
    judge_identity,
    judge_prompt,
    keyed_slice,
    materialize,
    stage_key,
    teacher_identity,
)
from plad_core.stages.teacher import teacher_key_entries, teacher_model_spec

SAMPLE_COLUMNS = ["system", "id", "sample_index", "text", "logp_mean", "rougeL"]  # of an evaluation without samples


def dev_generations(model: Any, tokenizer: Any, system: str, dev: pd.DataFrame, data: Artifact,
                    prompt_cfg: DictConfig, cfg: DictConfig) -> pd.DataFrame:
    """``dev_outputs.generate_and_score`` on ``dev``, prompted with ``prompt_cfg`` and the data artifact's examples."""
    prompts, _ = prompts_for(dev, data, prompt_cfg, tokenizer)
    return dev_outputs.generate_and_score(model, tokenizer, system, dev, prompts, cfg)


def dev_calibration_samples(model: Any, tokenizer: Any, system: str, dev: pd.DataFrame, data: Artifact,
                            cfg: DictConfig) -> pd.DataFrame:
    """``dev_outputs.calibration_samples`` on the calibration rows of ``dev``, prompted as the student."""
    rows = dev_outputs.calibration_rows(dev, cfg.eval)
    prompts, _ = prompts_for(rows, data, cfg.student.prompt, tokenizer)
    return dev_outputs.calibration_samples(model, tokenizer, system, rows, prompts, cfg)


def teacher_api(cfg: DictConfig) -> openai_api.ApiSettings | None:
    """The teacher's endpoint (``teacher.sampling.api``, checked) when it is behind an API, else None."""
    if cfg.teacher.sampling.backend != "openai":
        return None
    return openai_api.ApiSettings.from_config(cfg.teacher.sampling.api).check("teacher.sampling.api")


def dev_teacher_identity(cfg: DictConfig) -> dict[str, Any]:
    """The teacher in the dev outputs' and evaluate's keys: the endpoint behind an API, else its weights."""
    api = teacher_api(cfg)
    return api_identity(api) if api else teacher_identity(cfg)


def run_dev_outputs(cfg: DictConfig, store: ArtifactStore, data: Artifact, model: Artifact | None = None,
                    force: bool = False, on_calibration: Callable[[], None] | None = None) -> Artifact:
    """One model's outputs on the dev split, cached apart from the evaluations that read them.

    ``model`` None is the teacher (keyed by its fingerprint and ``teacher.prompt``; with
    ``teacher.sampling.backend=openai``, greedy answers of ``teacher.sampling.api``, keyed by the
    endpoint, and no model is loaded here: ``dev_teacher_identity``); otherwise a student
    artifact, ``sft_student`` or ``calibrate`` (keyed by its artifact key and ``student.prompt``), which
    also gets ``eval.calibration_samples`` scored samples per prompt when that is > 0. Writes
    generations.parquet (id, text, output_tokens, rouge1, rouge2, rougeL: greedy, ROUGE F1 against the
    references) and, for a student with K > 0, calibration_samples.parquet (``dev_outputs.calibration_samples``'s
    columns). Neither has a system column: one model is "plad" in an evaluation and "seqkd" in a table,
    so readers name it (``dev_frames``). ``on_calibration()`` is called as calibration sampling starts."""
    teacher = model is None
    api = teacher_api(cfg) if teacher else None
    k = calibration_k(cfg)
    sampled = not teacher and k > 0
    # an endpoint's batching and precision are not ours to set: as in sample_teacher's key, they are out
    generation = [p for p in GENERATION_SLICE if not api or p not in ("eval.batch_size", "eval.dtype")]
    config = {**keyed_slice(cfg, generation + (CALIBRATION_SLICE if sampled else [])),
              **(teacher_key_entries(cfg, store, data) if teacher else keyed_slice(cfg, ["student.prompt"]))}
    upstream = [data] if teacher else [data, model]
    label = "teacher" if teacher else model.stage

    def build(out: Path, work: Path) -> dict[str, Any]:
        dev = read_split(data, "dev")
        if api:
            prompts, _ = prompts_for(dev, data, cfg.teacher.prompt, openai_api.CharTokens())
            started = time.perf_counter()
            generations = dev_outputs.api_generate_and_score(api, label, dev, prompts, cfg)
        else:
            local = teacher_model_spec(cfg, store, data) if teacher else None
            loaded, prompt_cfg = ((local.load(cfg), local.prompt) if local
                                  else (load_artifact_model(model, cfg), cfg.student.prompt))
            started = time.perf_counter()
            generations = dev_generations(*loaded, label, dev, data, prompt_cfg, cfg)
        generations = generations.drop(columns="system")
        generations.to_parquet(out / "generations.parquet", index=False)
        seconds = {"generate": round(time.perf_counter() - started, 1)}
        stats: dict[str, Any] = {"rows": len(generations), "rougeL": float(generations["rougeL"].mean())}
        if sampled:
            if on_calibration:
                on_calibration()
            started = time.perf_counter()
            samples = dev_calibration_samples(*loaded, label, dev, data, cfg).drop(columns="system")
            samples.to_parquet(out / "calibration_samples.parquet", index=False)
            seconds["calibration"] = round(time.perf_counter() - started, 1)
            stats["calibration_samples"] = len(samples)
        return {**stats, "seconds": seconds}

    return materialize(store, "dev_outputs", config, upstream, build, force)


def run_judgments(cfg: DictConfig, store: ArtifactStore, data: Artifact, outputs: dict[str, Artifact],
                  force: bool = False, progress: Callable[[float], None] | None = None) -> Artifact:
    """The judge's verdicts (``eval.judge``) on named dev outputs (``run_dev_outputs`` artifacts): each
    system against the human reference and against the one named "sft", in both orders, every row's
    judgments sharing one prefix pass (``judgments.parquet``, ``judge.JUDGMENT_COLUMNS``), with the known-answer
    cases of ``judge_validity`` (opponent "validity"). Keyed by the judge, the cases' settings and the outputs'
    names and keys, so a table re-rendered with the same systems reuses it, as does an evaluation of the
    same models. ``progress(fraction)``, when given, follows the judge."""
    if not cfg.eval.judge.enabled:
        raise ValueError("run_judgments needs eval.judge.enabled=true")
    config = {"judge": judge_identity(cfg), "systems": {name: a.key for name, a in outputs.items()},
              "validity": {"rows": cfg.eval.judge.validity_rows, "seed": cfg.eval.seed}}

    def build(out: Path, work: Path) -> dict[str, Any]:
        j, e = cfg.eval.judge, cfg.eval
        dev = read_split(data, "dev")
        generations = pd.concat([dev_frames(a, name)[0] for name, a in outputs.items()], ignore_index=True)
        started = time.perf_counter()
        judge, counter = judge_lib.make_judge(j, cfg.cache_dir, cfg.device, e.dtype, e.seed,
                                              judge_lib.judge_load(j, cfg.teacher))
        prompt = judge_prompt(cfg)
        prefixes = prompt.fill_prefixes(dev.head(j.rows) if j.rows > 0 else dev, counter, j.max_tokens,
                                        data_lib.task_spec(cfg.data.task))
        cases = judge_validity.validity_cases(dev, list(prefixes), cfg.data.task, e.seed, j.validity_rows)
        requests = judge_lib.system_requests(prompt, prefixes, dict(zip(dev["id"], dev["reference"])), generations)
        judgments = judge_lib.judge_requests(judge, requests + judge_validity.validity_requests(prompt, prefixes, cases),
                                             progress)
        judgments.to_parquet(out / "judgments.parquet", index=False)
        return {"judgments": len(requests), "validity_cases": len(cases), "rows": int(judgments["id"].nunique()),
                "seconds": round(time.perf_counter() - started, 1)}

    return materialize(store, "judgments", config, [data], build, force)


def _evaluation_steps(systems: list[str], k: int, judged: bool) -> list[str]:
    """The progress steps of an evaluation: each system's outputs (and samples), the judge, the report."""
    return ([step for s in systems for step in
             [f"generate {s}", *([f"calibration samples {s}"] if k and s in dev_outputs.CALIBRATED_SYSTEMS else [])]]
            + (["judge"] if judged else []) + ["metrics and report"])


def _collect_outputs(cfg: DictConfig, store: ArtifactStore, data: Artifact, systems: list[str],
                     models_of: dict[str, Artifact | None],
                     steps: Steps) -> tuple[dict[str, Artifact], pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """Each system's dev outputs (built or reused), their generations and calibration samples with a
    ``system`` column, and the seconds spent building them (here or by an earlier run)."""
    frames, sampled, outputs = [], [], {}
    seconds = {"generate": 0.0, "calibration": 0.0}
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
    samples = pd.concat(sampled, ignore_index=True) if sampled else pd.DataFrame(columns=SAMPLE_COLUMNS)
    return outputs, pd.concat(frames, ignore_index=True), samples, seconds


def _judge(cfg: DictConfig, store: ArtifactStore, data: Artifact, outputs: dict[str, Artifact], force: bool,
           steps: Steps, out: Path) -> Artifact:
    """The judgments of ``outputs`` (built or reused; ``force`` re-judges), copied into ``out``."""
    steps.report("judge")
    judged = run_judgments(cfg, store, data, outputs, force, steps.within("judge"))
    shutil.copyfile(judged.file("judgments.parquet"), out / "judgments.parquet")
    return judged


def stage_metrics(cfg: DictConfig, generations: pd.DataFrame, dev: pd.DataFrame, samples: pd.DataFrame,
             judgments: pd.DataFrame | None, k: int, seconds: dict[str, float]) -> dict[str, Any]:
    """``evaluate.evaluation_metrics`` with the calibration sampling and judge settings."""
    e = cfg.eval
    metrics = eval_lib.evaluation_metrics(generations, dev[["id", "reference"]], samples, list(e.length_buckets),
                                          e.n_resamples, e.seed, e.calibration_bins, judgments)
    metrics["settings"].update(calibration_samples=k, calibration_temperature=e.calibration_temperature,
                               calibration_top_p=e.calibration_top_p)
    if judgments is not None:
        metrics["settings"]["judge"] = {
            "backend": e.judge.backend, "model": e.judge.api.model if e.judge.backend == "openai" else e.judge.model,
            "prompt": e.judge.prompt, "rows": int(judgments["id"].nunique()), "validity_rows": e.judge.validity_rows,
            "task": cfg.data.task, "seconds": round(seconds["judge"], 1)}
    return metrics


def _provenance(store: ArtifactStore, key: str, config: dict[str, Any], upstream: list[Artifact],
                outputs: dict[str, Artifact], judged: Artifact | None) -> dict[str, Any]:
    """The report's provenance: every artifact key behind it, the config slice, where the report lives."""
    calibrated = upstream[-1]
    keys = {"evaluate": key, **{a.stage: a.key for a in upstream},
            **{f"dev_outputs ({s})": a.key for s, a in outputs.items()},
            **({"judgments": judged.key} if judged else {}),
            **{f"{s} (calibrate's upstream)": v for s, v in calibrated.manifest.get("upstream", {}).items()
               if s != "sft_student"}}
    return {"keys": keys, "config": config, "report_path": str(store.path("evaluate", key) / "report.html")}


def _write_outputs(out: Path, cfg: DictConfig, metrics: dict[str, Any], generations: pd.DataFrame,
                   samples: pd.DataFrame, dev: pd.DataFrame, calibrated: Artifact, provenance: dict[str, Any]) -> None:
    """``report.write_data_files``, the report and results.md."""
    references = report.write_data_files(out, cfg, metrics, generations, samples, dev)
    log_path = calibrated.file("train_log.parquet")
    summary = report.write_report(
        out, metrics, generations, references, pd.read_parquet(log_path) if log_path.is_file() else None,
        provenance, title=f"PLaD evaluation: {cfg.name}, dev split", n_examples=cfg.eval.report_examples)
    (out / "results.md").write_text(summary)


def summary_stats(metrics: dict[str, Any], dev_rows: int, seconds: dict[str, float]) -> dict[str, Any]:
    """The evaluate manifest's stats: the headline metrics, calibration, judge win rates and timings."""
    judge = metrics["judge"]
    return {"metrics": metrics["systems"], "paired": metrics["paired"],
            "calibration": {s: {m: c[m] for m in ("spearman", "ece", "prompts_used", "prompts_skipped")}
                            for s, c in metrics["calibration"].items()},
            "judge": {"consistency": judge["consistency"], "a_rate": judge["a_rate"], "validity": judge["validity"],
                      "win_rate": {o: {s: w["win_rate"] for s, w in by.items()} for o, by in judge["vs"].items()}}
            if judge else None,
            "length_buckets": metrics["length_buckets"]["edges"], "dev_rows": dev_rows,
            "seconds": {name: round(v, 1) for name, v in seconds.items()}}


def run_evaluate(cfg: DictConfig, store: ArtifactStore, data: Artifact, sft: Artifact, calibrated: Artifact,
                 force: bool = False, progress: ProgressCallback | None = None) -> Artifact:
    """Greedy outputs of each system on the dev split scored with ROUGE-1/2/L F1 against the human
    references, with bootstrap CIs, the paired PLaD-vs-SFT test, the students' calibration
    (``eval.calibration_samples`` samples per prompt), the judge's win rates against the reference
    and the SFT student (``eval.judge``) and every metric by reference-length bucket. The outputs and
    the verdicts are artifacts of their own (``run_dev_outputs``, ``run_judgments``), built here or reused.

    Writes generations.parquet, calibration_samples.parquet, judgments.parquet, metrics.json
    (``plad_core.evaluation.metrics.evaluation_metrics``), report.md, report.html, plots/ and results.md
    (the report's summary, published by the flow). ``progress(fraction, message)``, when given, is
    called as each system, the calibration sampling and the judge advance (``plad_core.progress``)."""
    systems = list(cfg.eval.systems)
    config = {**keyed_slice(cfg, ["eval", "student.prompt"]),
              **(teacher_key_entries(cfg, store, data) if "teacher" in systems else {})}
    config["eval"] = {**config["eval"], "judge": judge_identity(cfg)}
    upstream = [data, sft, calibrated]
    key = stage_key("evaluate", config, upstream)
    k = calibration_k(cfg)

    def build(out: Path, work: Path) -> dict[str, Any]:
        dev = read_split(data, "dev")
        models_of = {"teacher": None, "sft": sft, "plad": calibrated}
        unknown = [s for s in systems if s not in models_of]
        if unknown:
            raise ConfigError(f"eval.systems has unknown names {unknown}; known: {list(models_of)}")
        judged_too = cfg.eval.judge.enabled
        steps = Steps(_evaluation_steps(systems, k, judged_too), progress)
        outputs, generations, samples, seconds = _collect_outputs(cfg, store, data, systems, models_of, steps)
        judged = _judge(cfg, store, data, outputs, force, steps, out) if judged_too else None
        judgments = pd.read_parquet(judged.file("judgments.parquet")) if judged is not None else None
        if judged is not None:
            seconds["judge"] = judged.manifest["stats"]["seconds"]  # here or by an earlier run, as the dev outputs
        steps.report("metrics and report")
        started = time.perf_counter()
        metrics = stage_metrics(cfg, generations, dev, samples, judgments, k, seconds)
        metrics["curation"] = curation_stats(store, calibrated)  # the report's pair-curation section
        _write_outputs(out, cfg, metrics, generations, samples, dev, calibrated,
                       _provenance(store, key, config, upstream, outputs, judged))
        seconds["metrics_and_report"] = time.perf_counter() - started
        steps.done()
        return summary_stats(metrics, len(dev), seconds)

    return materialize(store, "evaluate", config, upstream, build, force)
