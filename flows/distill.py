"""The ``distill`` flow: PLaD end to end, one Prefect task per stage."""

from __future__ import annotations

import json
import logging
from typing import Any, Optional

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from flows.dask_runner import sample_shards_on_dask
from plad_core.artifacts import ArtifactStore
from plad_core.config import load_config
from plad_core.models import set_threads
from plad_core.report.evaluation import results_table
from plad_core.stages import RUNNERS, check_train_loss, sampling_jobs
from plad_core.stages.promote import check_promotion
from tasks import (
    build_pairs,
    calibrate,
    curate_pairs,
    evaluate,
    init_student,
    prepare_data,
    promote,
    sample_student,
    sample_teacher,
    score_pairs,
    sft_student,
    sft_teacher,
)

# Runs started by a deployment's runner leave the root logger at WARNING; plad's stage progress
# (building / reusing / promotion) is INFO and should reach the Prefect UI there too.
logging.getLogger("plad").setLevel(logging.INFO)


RUNNER_KINDS = ("local", "dask")


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
    check_train_loss(cfg)  # before any stage: a bad train.loss would otherwise fail after sampling
    check_promotion(cfg)  # and promotion settings after the whole run
    if cfg.runner.kind not in RUNNER_KINDS:
        raise ValueError(f"runner.kind='{cfg.runner.kind}' is not one of {', '.join(RUNNER_KINDS)}")
    set_threads(cfg.threads)
    store = ArtifactStore(cfg.artifacts_root)

    data = prepare_data(cfg, store, force="prepare_data" in rebuild)
    init = init_student(cfg, store, data, force="init_student" in rebuild)
    sft = sft_student(cfg, store, data, init, force="sft_student" in rebuild)
    tuned_teacher = sft_teacher(cfg, store, data, force="sft_teacher" in rebuild)
    if cfg.runner.kind == "dask":  # the shards run on the cluster; the two stages below then merge them
        jobs = (sampling_jobs(cfg, store, "sample_teacher", data, force="sample_teacher" in rebuild,
                              torch_threads=cfg.runner.torch_threads)
                + sampling_jobs(cfg, store, "sample_student", data, sft, force="sample_student" in rebuild,
                                torch_threads=cfg.runner.torch_threads))
        if jobs:
            sample_shards_on_dask(cfg.runner, jobs)
    teacher_samples = sample_teacher(cfg, store, data, tuned_teacher, force="sample_teacher" in rebuild)
    student_samples = sample_student(cfg, store, data, sft, force="sample_student" in rebuild)
    built = build_pairs(cfg, store, data, teacher_samples, student_samples, force="build_pairs" in rebuild)
    pairs = curate_pairs(cfg, store, built, sft, force="curate_pairs" in rebuild)
    scores = score_pairs(cfg, store, pairs, sft, force="score_pairs" in rebuild)
    calibrated = calibrate(cfg, store, pairs, sft, scores, force="calibrate" in rebuild)
    results = evaluate(cfg, store, data, sft, calibrated, force="evaluate" in rebuild)
    decision = promote(cfg, store, data, calibrated, results, str(flow_run.id)) if cfg.promotion.enabled else None

    # results.md is the report's summary (results with CIs, PLaD vs SFT, calibration, by length);
    # the whole report with its plots is report.html beside it.
    summary = results.file("results.md").read_text()
    create_markdown_artifact(key="distill-results", markdown=summary,
                             description=f"config {cfg.name}: summary of {results.file('report.html')}")
    table = results_table(json.loads(results.file("metrics.json").read_text()))
    create_table_artifact(key="distill-results-table", table=[dict(zip(table.header, row)) for row in table.rows],
                          description=f"config {cfg.name}: dev-split results with 95% CIs")
    # Named, not logged whole: `plad run` prints the summary once at the end, and the UI shows the artifact.
    get_run_logger().info("results: Prefect artifacts 'distill-results' and 'distill-results-table'; report: %s",
                          results.file("report.html"))
    artifacts = {a.stage: str(a.path) for a in (data, init, sft, tuned_teacher, teacher_samples, student_samples,
                                                 built, pairs, scores, calibrated, results)}
    return {"config": cfg.name, "metrics": results.manifest["stats"]["metrics"], "artifacts": artifacts,
            "promotion": decision}
