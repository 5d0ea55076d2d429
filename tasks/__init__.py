"""Prefect tasks: one per pipeline stage, each a thin wrapper of ``plad_core.stages.run_<stage>``.

Prefect's own caching and result persistence are off: the artifact store alone decides reuse,
so a stage re-run from a notebook, the CLI or a flow sees the same artifacts.
"""

import logging

from prefect import Task, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from plad_core.sampling.samplers import run_shard_job
from plad_core.stages import (
    RUNNERS,
    run_dev_outputs,
    run_evaluate,
    run_judgments,
    run_promote,
)
from plad_core.stages.tune_data import run_tune_data

log = logging.getLogger("plad.tasks")

# Sampling can meet transient failures (an API teacher, a killed worker); its shards make a retry cheap.
RETRIES = {"sample_teacher": 2, "sample_student": 2}


def stage_task(name: str) -> Task:
    return task(RUNNERS[name], name=name, cache_policy=NO_CACHE, persist_result=False,
                retries=RETRIES.get(name, 0), retry_delay_seconds=5)


# One shard of a sampling stage, for runner.kind=dask (flows/distill.py): a retry redoes only that shard.
sample_shard = task(run_shard_job, name="sample_shard", cache_policy=NO_CACHE, persist_result=False,
                    retries=RETRIES["sample_teacher"], retry_delay_seconds=5)

# Champion/challenger decision: stateful (appends to the registry), so it is never cached or retried.
promote = task(run_promote, name="promote", cache_policy=NO_CACHE, persist_result=False)


prepare_data = stage_task("prepare_data")
init_student = stage_task("init_student")
sft_student = stage_task("sft_student")
sft_teacher = stage_task("sft_teacher")
sample_teacher = stage_task("sample_teacher")
sample_student = stage_task("sample_student")
build_pairs = stage_task("build_pairs")
curate_pairs = stage_task("curate_pairs")
score_pairs = stage_task("score_pairs")
calibrate = stage_task("calibrate")
# Steps of the table experiment (flows/table.py): one model's dev outputs; the judge over many models' outputs.
tune_data = task(run_tune_data, name="tune_data", cache_policy=NO_CACHE, persist_result=False)
dev_outputs = task(run_dev_outputs, name="dev_outputs", cache_policy=NO_CACHE, persist_result=False)
judgments = task(run_judgments, name="judgments", cache_policy=NO_CACHE, persist_result=False)

EVALUATE_PROGRESS = "evaluate-progress"  # the Prefect progress artifact's key


def evaluate_with_progress(cfg, store, data, sft, calibrated, force=False):
    """``run_evaluate``, its progress (generation per system, calibration sampling, the judge) shown
    in the Prefect progress artifact ``evaluate-progress``: 100% once the artifact is built or reused.
    A failed progress update is logged, never raised: it must not fail a long evaluation."""
    artifact_id = create_progress_artifact(0.0, key=EVALUATE_PROGRESS, description=f"evaluate ({cfg.name}): starting")

    def report(fraction: float, message: str) -> None:
        try:
            update_progress_artifact(artifact_id, round(100 * fraction, 1), description=f"evaluate ({cfg.name}): {message}")
        except Exception as err:  # noqa: BLE001 (any API failure; progress is advisory)
            log.warning("evaluate progress update failed: %s", err)

    artifact = run_evaluate(cfg, store, data, sft, calibrated, force=force, progress=report)
    report(1.0, f"done, {artifact.path / 'report.html'}")
    return artifact


evaluate = task(evaluate_with_progress, name="evaluate", cache_policy=NO_CACHE, persist_result=False)
