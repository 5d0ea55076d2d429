"""``plad eval``: score named models on a data file of the task's schema with evaluate's metrics, CIs,
judge and report, without training: how a user scores a student on a held-out test set of their own.

The file becomes an ``eval_data`` artifact (``eval_inputs.run_eval_data``: every row in the dev
split), so evaluate's machinery runs on it unchanged: ``run_dev_outputs`` for the teacher and model
artifacts, ``run_model_outputs`` (its twin for a folder or hub model) otherwise, ``run_judgments``,
``evaluate.stage_metrics`` and the evaluation report. The result is an ``eval`` artifact keyed by the
file's content, each model's outputs and the eval settings.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from plad_core.artifacts import Artifact, ArtifactStore, artifact_key
from plad_core.evaluation import metrics as eval_lib
from plad_core.report import evaluation as report
from plad_core.report.blocks import Heading, Para, Table, render_markdown, write_pages
from plad_core.report.text import difference_text, p_text
from plad_core.stages import code_version
from plad_core.stages.checks import calibration_k
from plad_core.stages.eval_inputs import (
    fewshot_needed,
    model_outputs,
    resolve_model,
    run_eval_data,
)
from plad_core.stages.evaluate import (
    SAMPLE_COLUMNS,
    dev_teacher_identity,
    run_judgments,
    stage_metrics,
    summary_stats,
)
from plad_core.stages.inputs import dev_frames, read_split
from plad_core.stages.keys import judge_identity, keyed_slice

BASELINE = "sft"  # the baseline when a model has this name, as in evaluate; else the first named model


def paired_vs_baseline(generations: pd.DataFrame, baseline: str, n_resamples: int, seed: int) -> dict[str, Any]:
    """``<system>_vs_<baseline>``: each other system's paired ROUGE-L difference from the baseline
    (``metrics.paired_comparison``, the test evaluate runs for PLaD vs SFT)."""
    base = generations[generations["system"] == baseline]
    return {f"{s}_vs_{baseline}": eval_lib.paired_comparison(generations[generations["system"] == s], base,
                                                             "rougeL", n_resamples, seed)
            for s in generations["system"].unique() if s != baseline}


def _paired_blocks(paired: dict[str, Any], baseline: str, n_resamples: int) -> list[Any]:
    rows = [[name.rsplit("_vs_", 1)[0] + f" − {baseline}", difference_text(p), p_text(p["p_value"], n_resamples),
             str(p["n"]), "yes" if p["low"] > 0 or p["high"] < 0 else "no"]
            for name, p in paired.items() if p]
    if not rows:  # one model: nothing to compare
        return []
    return [Heading(f"Each model vs the baseline, {baseline} (paired bootstrap)"),
            Para(f"Per-row ROUGE-L F1 difference (x100) from the baseline over the rows both scored, with its 95% "
                 f"paired-bootstrap CI and two-sided p-value ({n_resamples} resamples). The baseline is the model "
                 f"named {BASELINE} when there is one, else the first model named."),
            Table(["model − baseline", "ROUGE-L difference [95% CI]", "p", "n", "CI excludes 0"], rows)]


def _placed(blocks: list[Any], paired: list[Any]) -> list[Any]:
    """``blocks`` with ``paired`` after the first table (the results)."""
    at = next((i + 1 for i, b in enumerate(blocks) if isinstance(b, Table)), len(blocks))
    return [*blocks[:at], *paired, *blocks[at:]]


def _write(out: Path, cfg: DictConfig, metrics: dict[str, Any], generations: pd.DataFrame, samples: pd.DataFrame,
           dev: pd.DataFrame, provenance: dict[str, Any], title: str) -> None:
    """generations.parquet, calibration_samples.parquet, metrics.json, report.md/html and results.md:
    evaluate's report with the comparisons against the baseline after the results table."""
    references = report.write_data_files(out, cfg, metrics, generations, samples, dev)
    blocks, summary = report.build_blocks(metrics, generations, references, None, provenance, title,
                                          cfg.eval.report_examples)
    paired = _paired_blocks(metrics["paired_vs_baseline"], metrics["baseline"], cfg.eval.n_resamples)
    write_pages(out, _placed(blocks, paired), title)
    (out / "results.md").write_text(render_markdown(_placed(summary, paired)))


def _collect(outputs: dict[str, Artifact]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """The models' generations and calibration samples with a ``system`` column, and their seconds."""
    frames = [dev_frames(a, name) for name, a in outputs.items()]
    sampled = [s for _, s in frames if s is not None]
    seconds = {"generate": 0.0, "calibration": 0.0}
    for a in outputs.values():
        for name, value in a.manifest["stats"]["seconds"].items():
            seconds[name] = seconds.get(name, 0.0) + value
    samples = pd.concat(sampled, ignore_index=True) if sampled else pd.DataFrame(columns=SAMPLE_COLUMNS)
    return pd.concat([g for g, _ in frames], ignore_index=True), samples, seconds


def run_eval_models(cfg: DictConfig, store: ArtifactStore, path: str, specs: list[tuple[str, str]], rows: int = 0,
                    force: bool = False) -> Artifact:
    """Score the models ``specs`` ((name, spec) pairs, ``eval_inputs.parse_model_args``) on every row of
    the file ``path`` (the first ``rows`` when > 0): greedy outputs with ROUGE-1/2/L and bootstrap CIs,
    each model's paired ROUGE-L difference from the baseline (``BASELINE``), the students' calibration,
    the judge's win rates (``eval.judge``) and every metric by reference length, in evaluate's report.

    Writes generations.parquet, calibration_samples.parquet, judgments.parquet (with the judge),
    metrics.json (``evaluation_metrics`` plus ``baseline`` and ``paired_vs_baseline``), report.md,
    report.html, plots/ and results.md. ``force`` rebuilds the eval artifact and re-judges."""
    evaluated = [resolve_model(cfg, store, name, spec) for name, spec in specs]
    k = calibration_k(cfg)
    data = run_eval_data(cfg, store, path, rows, fewshot_needed(cfg, evaluated))
    outputs = {m.name: model_outputs(cfg, store, data, m) for m in evaluated}
    baseline = BASELINE if BASELINE in outputs else evaluated[0].name
    config = {**keyed_slice(cfg, ["eval", "student.prompt"]),
              **({"teacher": dev_teacher_identity(cfg), **keyed_slice(cfg, ["teacher.prompt"])}
                 if any(m.teacher for m in evaluated) else {}),
              "models": {m.name: {"spec": m.spec, "outputs": f"{outputs[m.name].stage}/{outputs[m.name].key}"}
                         for m in evaluated}, "baseline": baseline}
    # eval.systems names evaluate's systems; here the models are named on the command line
    config["eval"] = {**{k: v for k, v in config["eval"].items() if k != "systems"}, "judge": judge_identity(cfg)}
    code = code_version.module_fingerprint(__name__)
    key = artifact_key("eval", code, config, {data.stage: data.key})
    title = f"plad eval: {cfg.name}, {Path(path).name}"

    def build(out: Path, work: Path) -> dict[str, Any]:
        dev = read_split(data, "dev")
        generations, samples, seconds = _collect(outputs)
        judged = run_judgments(cfg, store, data, outputs, force) if cfg.eval.judge.enabled else None
        judgments = pd.read_parquet(judged.file("judgments.parquet")) if judged is not None else None
        if judged is not None:
            judgments.to_parquet(out / "judgments.parquet", index=False)
            seconds["judge"] = judged.manifest["stats"]["seconds"]
        started = time.perf_counter()
        metrics = stage_metrics(cfg, generations, dev, samples, judgments, k, seconds)
        metrics["baseline"] = baseline
        metrics["paired_vs_baseline"] = paired_vs_baseline(generations, baseline, cfg.eval.n_resamples, cfg.eval.seed)
        keys = {"eval": key, "eval_data": data.key, **data.manifest["upstream"],
                **{f"outputs ({name})": f"{a.stage}/{a.key}" for name, a in outputs.items()},
                **({"judgments": judged.key} if judged else {})}
        provenance = {"keys": keys, "config": config, "report_path": str(store.path("eval", key) / "report.html")}
        _write(out, cfg, metrics, generations, samples, dev, provenance, title)
        seconds["metrics_and_report"] = time.perf_counter() - started
        return {**summary_stats(metrics, len(dev), seconds), "paired_vs_baseline": metrics["paired_vs_baseline"],
                "source": path}

    return store.materialize("eval", code, config, {data.stage: data.key}, build, force)
