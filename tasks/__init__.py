"""Prefect tasks: one per pipeline stage, each a thin wrapper of ``plad_core.stages.run_<stage>``.

Prefect's own caching and result persistence are off: the artifact store alone decides reuse,
so a stage re-run from a notebook, the CLI or a flow sees the same artifacts.
"""

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from plad_core.stages import RUNNERS, run_promote

# Sampling can meet transient failures (an API teacher, a killed worker); its shards make a retry cheap.
RETRIES = {"sample_teacher": 2, "sample_student": 2}


def stage_task(name: str) -> Task:
    return task(RUNNERS[name], name=name, cache_policy=NO_CACHE, persist_result=False,
                retries=RETRIES.get(name, 0), retry_delay_seconds=5)


# Champion/challenger decision: stateful (appends to the registry), so it is never cached or retried.
promote = task(run_promote, name="promote", cache_policy=NO_CACHE, persist_result=False)


prepare_data = stage_task("prepare_data")
init_student = stage_task("init_student")
sft_student = stage_task("sft_student")
sample_teacher = stage_task("sample_teacher")
sample_student = stage_task("sample_student")
build_pairs = stage_task("build_pairs")
calibrate = stage_task("calibrate")
evaluate = stage_task("evaluate")
