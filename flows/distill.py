"""The ``distill`` flow: PLaD end to end, one Prefect task per stage."""

from __future__ import annotations

import logging
from typing import Any, Optional

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from plad_core.artifacts import ArtifactStore
from plad_core.config import load_config
from plad_core.models import set_threads
from plad_core.stages import RUNNERS
from tasks import (build_pairs, calibrate, evaluate, init_student, prepare_data, promote, sample_student,
                   sample_teacher, sft_student)

# Runs started by a deployment's runner leave the root logger at WARNING; plad's stage progress
# (building / reusing / promotion) is INFO and should reach the Prefect UI there too.
logging.getLogger("plad").setLevel(logging.INFO)


@flow(name="distill", log_prints=True)
def distill(config: str = "tldr", overrides: Optional[list[str]] = None,
            force: Optional[list[str]] = None) -> dict[str, Any]:
    """Distill the teacher into the student with PLaD.

    Args:
        config: a config name under conf/ (tldr, demo, ...) or a YAML path.
        overrides: OmegaConf dotlist, e.g. ["train.beta=0.5"].
        force: stages to rebuild even if their artifact exists, e.g. ["calibrate"].
    """
    cfg = load_config(config, overrides)
    unknown = sorted(set(force or []) - set(RUNNERS))
    if unknown:
        raise ValueError(f"force names unknown stages {unknown}; stages: {list(RUNNERS)}")
    rebuild = set(force or [])
    set_threads(cfg.threads)
    store = ArtifactStore(cfg.artifacts_root)

    data = prepare_data(cfg, store, force="prepare_data" in rebuild)
    init = init_student(cfg, store, data, force="init_student" in rebuild)
    sft = sft_student(cfg, store, data, init, force="sft_student" in rebuild)
    teacher_samples = sample_teacher(cfg, store, data, force="sample_teacher" in rebuild)
    student_samples = sample_student(cfg, store, data, sft, force="sample_student" in rebuild)
    pairs = build_pairs(cfg, store, data, teacher_samples, student_samples, force="build_pairs" in rebuild)
    calibrated = calibrate(cfg, store, pairs, sft, force="calibrate" in rebuild)
    results = evaluate(cfg, store, data, sft, calibrated, force="evaluate" in rebuild)
    decision = promote(cfg, store, data, calibrated, results, str(flow_run.id)) if cfg.promotion.enabled else None

    # results.md is the report's summary (results with CIs, PLaD vs SFT, calibration, by length);
    # the whole report with its plots is report.html beside it.
    summary = results.file("results.md").read_text()
    create_markdown_artifact(key="distill-results", markdown=summary,
                             description=f"config {cfg.name}: summary of {results.file('report.html')}")
    get_run_logger().info("results (%s):\n%s", results.file("report.html"), summary)
    artifacts = {a.stage: str(a.path) for a in (data, init, sft, teacher_samples, student_samples, pairs,
                                                 calibrated, results)}
    return {"config": cfg.name, "metrics": results.manifest["stats"]["metrics"], "artifacts": artifacts,
            "promotion": decision}
