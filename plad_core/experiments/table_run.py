"""Running a table experiment (``plad_core.experiments.table``): every system and seed through an
injected step function (plain calls, or the flow's Prefect tasks), then the table artifact."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig

from plad_core.artifacts import Artifact, ArtifactStore
from plad_core.config import load_config
from plad_core.experiments.files import ExperimentPages, commit_experiment
from plad_core.experiments.table import Run, TableExperiment, run_overrides
from plad_core.experiments.table_data import table_json
from plad_core.experiments.table_results import table_results
from plad_core.models import set_threads
from plad_core.report.table import table_blocks
from plad_core.stages import (
    DEPENDENCIES,
    RUNNERS,
    check_train_loss,
    code_version,
    run_dev_outputs,
    run_judgments,
)
from plad_core.stages.keys import keyed_slice
from plad_core.stages.tune_data import run_tune_data

STAGE = "table"
SHARED_STAGES = ("prepare_data", "init_student", "sft_student", "sft_teacher", "sample_teacher", "sample_student",
                 "build_pairs", "curate_pairs")
REFERENCE_SCORER = "train.loss=dpo"   # a config whose score_pairs holds the SFT student's log-probs of y_T, y_S

STEPS: dict[str, Callable[..., Artifact]] = {**RUNNERS, "tune_data": run_tune_data, "dev_outputs": run_dev_outputs,
                                             "judgments": run_judgments}
TableStep = Callable[..., Artifact]  # (step name, cfg, store, *upstream, label=...) -> Artifact


def run_plain(name: str, cfg: DictConfig, store: ArtifactStore, *upstream: Any, label: str = "") -> Artifact:
    """One step as a plain call (``STEPS``); the flow passes its Prefect tasks instead (``label`` names the run)."""
    return STEPS[name](cfg, store, *upstream)


def run_table(exp: TableExperiment, extra: Optional[list[str]] = None, step: TableStep = run_plain) -> Artifact:
    """Every system and seed of ``exp`` through ``step`` (plain calls or the flow's tasks), then the
    table artifact. Shared stages, SFT and teacher outputs are built once (or reused from the store)."""
    extra = list(extra or [])
    base = load_config(exp.config, [*exp.overrides, *extra])
    configs = {(s.name, seed): load_config(exp.config, run_overrides(exp, s, seed, extra))
               for s in exp.systems for seed in exp.seeds}
    for cfg in configs.values():  # a bad loss fails here, before hours of stages
        check_train_loss(cfg)
    set_threads(base.threads)
    store = ArtifactStore(base.artifacts_root)
    shared: dict[str, Artifact] = {}
    for name in SHARED_STAGES:
        shared[name] = step(name, base, store, *(shared[d] for d in DEPENDENCIES[name]), label=name)
    data, sft, pairs = shared["prepare_data"], shared["sft_student"], shared["curate_pairs"]
    before = step("score_pairs", load_config(exp.config, [*exp.overrides, *extra, REFERENCE_SCORER]), store, pairs,
                  sft, label="score_pairs (SFT log-probs)")
    # the rows every model is scored on: dev, or for a tuning table the labeled tuning slice
    scored = step("tune_data", base, store, data, exp.tune_rows, label="tune_data") if exp.tune_rows else data
    outputs = {"teacher": step("dev_outputs", base, store, scored, label="dev_outputs teacher"),
               "sft": step("dev_outputs", base, store, scored, sft, label="dev_outputs sft")}
    runs = []
    for (name, seed), cfg in configs.items():
        tag = f"{name}@{seed}"
        scores = step("score_pairs", cfg, store, pairs, sft, label=f"score_pairs {tag}")
        calibrated = step("calibrate", cfg, store, pairs, sft, scores, label=f"calibrate {tag}")
        outputs[tag] = step("dev_outputs", cfg, store, scored, calibrated, label=f"dev_outputs {tag}")
        runs.append(Run(name, seed, cfg.train.loss, cfg, calibrated, outputs[tag]))
    judged = step("judgments", base, store, scored, outputs, label="judgments") if base.eval.judge.enabled else None

    config = {"experiment": asdict(exp), "extra": extra, "eval": keyed_slice(base, ["eval"])["eval"]}
    upstream = {**({"tune_data": scored.key} if exp.tune_rows else {}), "build_pairs": shared["build_pairs"].key,
                "curate_pairs": pairs.key, "score_pairs (SFT log-probs)": before.key,
                **{f"dev_outputs {n}": a.key for n, a in outputs.items()},
                **{f"calibrate {r.label}": r.calibrated.key for r in runs},
                **({"judgments": judged.key} if judged else {})}

    def render(report_path: Path) -> ExperimentPages:
        result = table_results(exp, base, data, pairs, before, outputs, runs, judged, scored)
        result.keys = upstream
        blocks, summary = table_blocks(exp, extra, result, report_path)
        return ExperimentPages(
            f"PLaD table: {exp.name}", blocks, summary, "table.json",
            json.dumps(table_json(result), indent=2, ensure_ascii=False, default=str),
            {"systems": list(result.systems), "runs": len(runs),
             "rougeL": {s: m.metrics["rougeL"] for s, m in result.systems.items()}})

    return commit_experiment(store, STAGE, code_version.module_fingerprint(__name__), config, upstream, render)
