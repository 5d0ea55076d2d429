"""Sampling shards on a Dask cluster (runner.kind=dask): the same rows as one process, none twice."""

import pandas as pd
import pytest
from distributed import LocalCluster
from prefect import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
    TaskRunFilterName,
)
from prefect.testing.utilities import prefect_test_harness
from tiny import make_tiny_model, tiny_overrides

from flows.distill import distill
from plad_core import stages
from plad_core.artifacts import ArtifactStore
from plad_core.config import load_config

KEY = ["id", "sample_index"]


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def samples(artifact) -> pd.DataFrame:
    return pd.read_parquet(artifact.file("samples.parquet")).sort_values(KEY).reset_index(drop=True)


def assert_same_rows(distributed: pd.DataFrame, single: pd.DataFrame) -> None:
    assert not distributed.duplicated(KEY).any()
    assert set(map(tuple, distributed[KEY].values)) == set(map(tuple, single[KEY].values))
    pd.testing.assert_frame_equal(distributed, single)  # same shards, same seeds: the same texts


@pytest.mark.slow
def test_flow_samples_on_an_existing_cluster_like_one_process(harness, tmp_path):
    overrides = tiny_overrides(tmp_path, make_tiny_model(tmp_path / "teacher")) + [
        "data.n_unlabeled=10", "student.sampling.shard_size=4", "runner.kind=dask", "runner.torch_threads=0",
        "eval.calibration_samples=0", "eval.judge.enabled=false", "promotion.enabled=false"]
    with LocalCluster(host="127.0.0.1", n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address="127.0.0.1:0") as cluster:
        state = distill(config="tldr", overrides=overrides + [f"runner.address={cluster.scheduler_address}"],
                        return_state=True)
        assert "run_shard_job" in cluster.scheduler.task_prefixes  # the shards ran on this cluster
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
                                     task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="sample_shard")))
    assert len(runs) == 6 and all(r.state.is_completed() for r in runs)  # 3 shards of 4, 4, 2 prompts per stage
    result = state.result()
    cfg = load_config("tldr", overrides)
    store = ArtifactStore(cfg.artifacts_root)
    data, sft = (store.get(stage, key) for stage, key in
                 ((s, result["artifacts"][s].rsplit("/", 1)[1]) for s in ("prepare_data", "sft_student")))
    on_dask = {"sample_teacher": store.get("sample_teacher", result["artifacts"]["sample_teacher"].rsplit("/", 1)[1]),
               "sample_student": store.get("sample_student", result["artifacts"]["sample_student"].rsplit("/", 1)[1])}
    for artifact in on_dask.values():
        stats = artifact.manifest["stats"]
        assert stats["shards"] == 3 and stats["resumed_shards"] == 3  # every shard came from the cluster
    dask_rows = {stage: samples(a) for stage, a in on_dask.items()}
    # the same stages again in this process (same keys, rebuilt): one process, shard by shard
    single = {"sample_teacher": stages.run_sample_teacher(cfg, store, data, stages.run_sft_teacher(cfg, store, data),
                                                          force=True),
              "sample_student": stages.run_sample_student(cfg, store, data, sft, force=True)}
    for stage, artifact in single.items():
        assert artifact.key == on_dask[stage].key and artifact.manifest["stats"]["resumed_shards"] == 0
        assert len(dask_rows[stage]) == 10
        assert_same_rows(dask_rows[stage], samples(artifact))
