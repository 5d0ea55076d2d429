"""The whole distill flow on tiny random-init models with the real tokenizer and 16 real rows."""

import json
import math
import subprocess
import sys

import pandas as pd
import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.distill import distill
from plad_core.artifacts import MANIFEST, ArtifactStore
from plad_core.config import load_config
from plad_core.pairs import PAIRS_SCHEMA
from plad_core.sampling.schema import SAMPLES_SCHEMA
from plad_core.stages import DEPENDENCIES, run_stage
from tiny import HH, make_tiny_model, tiny_overrides

STAGES = list(DEPENDENCIES)


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow")
    return root, tiny_overrides(root, make_tiny_model(root / "teacher", layers=4))


@pytest.fixture(scope="module")
def first_run(harness, tiny):
    root, overrides = tiny
    return distill(config="tldr", overrides=overrides)


def manifest(path):
    return json.loads((path / MANIFEST).read_text())


@pytest.mark.slow
def test_every_stage_commits_its_artifact_with_expected_rows(first_run):
    paths = {k: __import__("pathlib").Path(v) for k, v in first_run["artifacts"].items()}
    assert sorted(paths) == sorted(STAGES)
    assert all((p / MANIFEST).is_file() for p in paths.values())

    rows = pd.read_parquet(paths["prepare_data"] / "rows.parquet")
    assert len(rows) == 16 and rows["split"].value_counts().to_dict() == {"labeled": 6, "unlabeled": 6, "dev": 4}
    unlabeled = set(rows.loc[rows["split"] == "unlabeled", "id"])

    for stage in ("sample_teacher", "sample_student"):
        samples = pd.read_parquet(paths[stage] / "samples.parquet")
        assert list(samples.columns) == SAMPLES_SCHEMA.names
        assert len(samples) == 6 and set(samples["id"]) == unlabeled
    assert manifest(paths["sample_teacher"])["stats"]["shards"] == 2  # shard_size 4 over 6 prompts

    pairs = pd.read_parquet(paths["build_pairs"] / "pairs.parquet")
    stats = manifest(paths["build_pairs"])["stats"]
    assert list(pairs.columns) == PAIRS_SCHEMA.names
    assert len(pairs) == stats["pairs"] == 6 - stats["dropped_empty"] - stats["dropped_identical"]
    assert set(pairs["id"]) <= unlabeled

    log = pd.read_parquet(paths["calibrate"] / "train_log.parquet")
    assert len(log) == math.ceil(len(pairs) / 2)
    assert {"loss", "pair_accuracy", "margin"} <= set(log.columns)
    for stage in ("init_student", "sft_student", "calibrate"):
        assert (paths[stage] / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_metrics_are_finite_for_every_system(first_run):
    metrics = first_run["metrics"]
    assert sorted(metrics) == ["plad", "sft", "teacher"]
    for system in metrics.values():
        assert system["n"] == 4
        assert all(math.isfinite(v) for v in system.values())
        assert 0 <= system["rougeL"] <= 100
        for name in ("rouge1", "rouge2", "rougeL", "mean_output_tokens"):
            assert system[f"{name}_low"] <= system[name] <= system[f"{name}_high"]


@pytest.mark.slow
def test_evaluate_writes_cis_calibration_buckets_and_the_report(first_run):
    evaluate = __import__("pathlib").Path(first_run["artifacts"]["evaluate"])
    metrics = json.loads((evaluate / "metrics.json").read_text())
    assert metrics["systems"] == first_run["metrics"]
    assert metrics["settings"]["n_resamples"] == 1000 and metrics["settings"]["calibration_samples"] == 4
    generations = pd.read_parquet(evaluate / "generations.parquet")
    plad, sft = (generations[generations["system"] == s].set_index("id")["rougeL"] for s in ("plad", "sft"))
    paired = metrics["paired"]["plad_vs_sft"]
    assert paired["n"] == 4 and paired["difference"] == pytest.approx(100 * (plad - sft).mean(), abs=0.01)
    assert paired["low"] <= paired["difference"] <= paired["high"] and 0 <= paired["p_value"] <= 1

    samples = pd.read_parquet(evaluate / "calibration_samples.parquet")
    assert len(samples) == 2 * 4 * 4 and sorted(samples["system"].unique()) == ["plad", "sft"]
    assert (samples["logp_mean"] < 0).all() and (samples["scored_tokens"] >= 1).all()
    assert samples["logp_mean"].to_numpy() == pytest.approx((samples["logp_sum"] / samples["scored_tokens"]).to_numpy())
    for student in ("sft", "plad"):
        c = metrics["calibration"][student]
        assert c["prompts"] == 4 and c["samples"] == 16 and c["prompts_used"] + c["prompts_skipped"] == 4
        assert c["spearman"] is None or -1 <= c["spearman"] <= 1
        assert c["ece"] is None or 0 <= c["ece"] <= 1
        assert sum(b["count"] for b in c["bins"]) == c["ece_samples"] <= 16

    buckets = metrics["length_buckets"]
    assert buckets["rule"].startswith("default") and len(buckets["buckets"]) == len(buckets["edges"]) + 1
    assert sum(b["n"] for b in buckets["buckets"]) == 4
    for b in buckets["buckets"]:
        assert all(m["n"] == b["n"] for m in b["systems"].values())

    page = (evaluate / "report.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 3 and (evaluate / "report.md").is_file()
    summary = (evaluate / "results.md").read_text()
    assert f"Full report: {evaluate / 'report.html'}" in summary
    assert f"{metrics['systems']['plad']['rougeL']:.2f} [{metrics['systems']['plad']['rougeL_low']:.2f}" in summary


@pytest.mark.slow
def test_second_run_reuses_every_stage(first_run, tiny):
    root, overrides = tiny
    before = {s: manifest(__import__("pathlib").Path(p))["started_at"] for s, p in first_run["artifacts"].items()}
    again = distill(config="tldr", overrides=overrides)
    assert again["artifacts"] == first_run["artifacts"]
    assert {s: manifest(__import__("pathlib").Path(p))["started_at"] for s, p in again["artifacts"].items()} == before


@pytest.mark.slow
def test_a_config_change_rebuilds_that_stage_and_downstream_only(first_run, tiny):
    root, overrides = tiny
    keys = {s: __import__("pathlib").Path(p).name for s, p in first_run["artifacts"].items()}

    def keys_with(extra):
        cfg = load_config("tldr", overrides + extra)
        store = ArtifactStore(cfg.artifacts_root)
        done = {}
        run_stage("evaluate", cfg, store, done=done)
        return {s: a.key for s, a in done.items()}

    beta = keys_with(["train.beta=0.5"])
    assert [s for s in STAGES if beta[s] != keys[s]] == ["calibrate", "evaluate"]
    margin = keys_with(["train.loss=margin", "train.nll_weight=0.1"])
    assert [s for s in STAGES if margin[s] != keys[s]] == ["calibrate", "evaluate"]
    sft = keys_with(["sft.lr=0.001"])
    assert [s for s in STAGES if sft[s] != keys[s]] == ["sft_student", "sample_student", "build_pairs",
                                                       "calibrate", "evaluate"]


@pytest.mark.slow
def test_champion_is_kept_unless_a_challenger_beats_it(first_run, tiny):
    root, overrides = tiny
    assert first_run["promotion"]["promoted"] and first_run["promotion"]["reason"] == "no champion yet"
    same = distill(config="tldr", overrides=overrides)["promotion"]
    assert not same["promoted"] and same["reason"] == "same model as the champion"
    challenger = distill(config="tldr", overrides=overrides + ["train.optim.lr=0.01"])["promotion"]
    assert challenger["promoted"] == (challenger["ci_low"] > 0)
    assert challenger["ci_low"] <= challenger["difference"] <= challenger["ci_high"]
    out = subprocess.run([sys.executable, "-m", "plad_core.cli", "history", "--config", "tldr", *overrides],
                         capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert "no champion yet" in lines[1] and "yes" in lines[1]          # first run: the first champion
    assert all("same model as the champion" in line for line in lines[2:-1])  # reruns of the same model
    assert ("yes" if challenger["promoted"] else "no") in lines[-1] and "the champion" in lines[-1]


@pytest.mark.slow
def test_cli_pairs_show_prints_pairs(first_run):
    path = first_run["artifacts"]["build_pairs"]
    out = subprocess.run([sys.executable, "-m", "plad_core.cli", "pairs", "show", path, "-n", "2"],
                         capture_output=True, text=True, check=True).stdout
    pairs = pd.read_parquet(f"{path}/pairs.parquet")
    assert out.startswith(f"{path}/pairs.parquet: {len(pairs)} pairs")
    assert pairs["id"].iloc[0] in out and "chosen" in out and "rejected" in out


@pytest.mark.slow
def test_hh_dialogues_run_through_the_same_flow(harness, tiny):
    root, _ = tiny
    overrides = tiny_overrides(root / "hh", root / "teacher", data=HH)
    result = distill(config="hh", overrides=overrides)
    rows = pd.read_parquet(f"{result['artifacts']['prepare_data']}/rows.parquet")
    assert len(rows) == 16 and all(rows["prompt"].str.endswith("\n\nAssistant:"))
    pairs = pd.read_parquet(f"{result['artifacts']['build_pairs']}/pairs.parquet")
    assert set(pairs["id"]) <= set(rows.loc[rows["split"] == "unlabeled", "id"])
    assert all(pairs["prompt"].str.endswith("Assistant:"))
    assert sorted(result["metrics"]) == ["plad", "sft", "teacher"]


def test_library_never_imports_prefect():
    code = ("import sys, plad_core.stages, plad_core.cli; "
            "assert not any(m == 'prefect' or m.startswith('prefect.') for m in sys.modules), 'prefect imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
