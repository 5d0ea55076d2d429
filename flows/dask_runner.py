"""Sampling shards on a Dask cluster (``runner.kind=dask``): the task runner, the Prefect API the
workers report to, and the submission of every shard as a ``sample_shard`` task."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from prefect import get_run_logger
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks import sample_shard


def dask_task_runner(runner: Any) -> Any:
    """prefect-dask's DaskTaskRunner for the ``runner`` config: the scheduler at ``runner.address``,
    or a LocalCluster of ``runner.workers`` processes bound to 127.0.0.1 (its HTTP endpoint on a free
    port), which the runner starts and stops."""
    from prefect_dask import DaskTaskRunner  # only runner.kind=dask needs Dask
    if runner.address:
        return DaskTaskRunner(address=runner.address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": runner.workers, "threads_per_worker": 1, "processes": True,
                                          "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"})


@contextmanager
def api_for_workers() -> Iterator[None]:
    """This flow's Prefect API as PREFECT_API_URL while tasks are submitted, so that Dask workers (other
    processes, which get the settings with each task) report to it. Under an ephemeral API (``plad run``
    without PREFECT_API_URL) each worker would otherwise start a temporary server of its own."""
    if PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import (
        SubprocessASGIServer,  # the flow's own temporary server
    )
    server = SubprocessASGIServer()
    server.start()  # already running: the flow run talks to it
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield


def sample_shards_on_dask(runner: Any, jobs: list) -> None:
    """Every sampling ShardJob as a ``sample_shard`` task on the Dask cluster; returns when all committed."""
    logger = get_run_logger()
    with api_for_workers(), dask_task_runner(runner) as task_runner:
        logger.info("sampling %d shards on Dask (%s)", len(jobs), runner.address or f"LocalCluster, {runner.workers} workers")
        futures = [task_runner.submit(sample_shard, parameters={"job": job}) for job in jobs]
        for future in futures:
            future.result()  # raises the first shard's error after its retries
