"""The whole distill flow on tiny random-init models with the real tokenizer and 16 real rows."""

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from prefect.testing.utilities import prefect_test_harness
from tiny import HH, make_tiny_model, tiny_overrides
from transformers import AutoTokenizer

from flows.distill import distill
from plad_core.artifacts import MANIFEST, ArtifactStore
from plad_core.config import load_config
from plad_core.losses import LOSS_NAMES, STORED_SCORERS, stored_columns
from plad_core.models import load_model
from plad_core.pairs import PAIRS_SCHEMA
from plad_core.sampling.schema import SAMPLES_SCHEMA
from plad_core.stages import (
    DEPENDENCIES,
    check_train_loss,
    run_calibrate,
    run_score_pairs,
    run_stage,
)
from plad_core.stages.promote import check_promotion
from plad_core.training.batches import collate, encode_pairs
from plad_core.training.logprobs import sequence_logprobs
from plad_core.training.reference_scores import SCORERS, SCORES_SCHEMA

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
    assert set(pairs["id"]) <= unlabeled and pairs["reference"].isna().all()  # unlabeled means unlabeled
    curated = pd.read_parquet(paths["curate_pairs"] / "pairs.parquet")  # what every loss trains on
    dropped = pd.read_parquet(paths["curate_pairs"] / "dropped.parquet")
    assert list(curated.columns) == PAIRS_SCHEMA.names and len(curated) + len(dropped) == len(pairs)
    curation = manifest(paths["curate_pairs"])["stats"]  # copied into metrics.json for the report's section
    assert json.loads((paths["evaluate"] / "metrics.json").read_text())["curation"] == curation
    assert curation["built"] == len(pairs) and curation["kept"] == len(curated)

    log = pd.read_parquet(paths["calibrate"] / "train_log.parquet")
    assert len(log) == math.ceil(len(curated) / 2)
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

    def keys_with(extra, last="evaluate"):
        cfg = load_config("tldr", overrides + extra)
        store = ArtifactStore(cfg.artifacts_root)
        done = {}
        run_stage(last, cfg, store, done=done)
        return {s: a.key for s, a in done.items()}

    beta = keys_with(["train.beta=0.5"])
    assert [s for s in STAGES if beta[s] != keys[s]] == ["calibrate", "evaluate"]
    margin = keys_with(["train.loss=margin", "train.nll_weight=0.1"])
    assert [s for s in STAGES if margin[s] != keys[s]] == ["calibrate", "evaluate"]
    sft = keys_with(["sft.lr=0.001"])
    assert [s for s in STAGES if sft[s] != keys[s]] == ["sft_student", "sample_student", "build_pairs",
                                                       "curate_pairs", "score_pairs", "calibrate", "evaluate"]
    # score_pairs' key holds what it scores, not the loss: dpo and ipo share the SFT reference's scores
    dpo, ipo = keys_with(["train.loss=dpo"], "calibrate"), keys_with(["train.loss=ipo"], "calibrate")
    assert [s for s in dpo if dpo[s] != keys[s]] == ["score_pairs", "calibrate"]
    assert dpo["score_pairs"] == ipo["score_pairs"] and dpo["calibrate"] != ipo["calibrate"]


def plad_scores(evaluate, metric="rougeL"):
    """One evaluation's per-row PLaD scores, by dev row id."""
    generations = pd.read_parquet(Path(evaluate) / "generations.parquet")
    return generations[generations["system"] == "plad"].set_index("id")[metric].sort_index()


@pytest.mark.slow
def test_champion_is_kept_unless_a_challenger_beats_it(first_run, tiny):
    root, overrides = tiny
    assert first_run["promotion"]["promoted"] and first_run["promotion"]["reason"] == "no champion yet"
    # The champion's model is the registry's own copy, beside it: the store's calibrate artifact can go.
    calibrate = Path(first_run["artifacts"]["calibrate"])
    kept = root / "artifacts" / "models" / calibrate.name
    assert first_run["promotion"]["model_path"] == str(kept)
    assert sorted(p.name for p in kept.iterdir()) == sorted(p.name for p in (calibrate / "model").iterdir())
    assert (kept / "model.safetensors").read_bytes() == (calibrate / "model" / "model.safetensors").read_bytes()
    same = distill(config="tldr", overrides=overrides)["promotion"]
    assert not same["promoted"] and same["reason"] == "same model as the champion"

    aside = calibrate.with_name(calibrate.name + ".aside")
    calibrate.rename(aside)
    try:
        result = distill(config="tldr", overrides=overrides + ["train.optim.lr=0.01", "promotion.seed=7",
                                                                "promotion.n_resamples=500"])
    finally:
        aside.rename(calibrate)
    challenger = result["promotion"]
    # Independently: the champion re-scored from its copy scores as in its own run; the paired
    # bootstrap of the per-row differences (rows in id order), in float64 numpy.
    champion_rows = plad_scores(first_run["artifacts"]["evaluate"])
    challenger_rows = plad_scores(result["artifacts"]["evaluate"])
    assert list(champion_rows.index) == list(challenger_rows.index) and len(champion_rows) == 4
    diff = (challenger_rows - champion_rows).to_numpy(dtype=np.float64)
    means = diff[np.random.default_rng(7).integers(0, len(diff), size=(500, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    assert challenger["champion_score"] == pytest.approx(champion_rows.mean(), abs=1e-12)
    assert challenger["challenger_score"] == pytest.approx(challenger_rows.mean(), abs=1e-12)
    assert challenger["difference"] == pytest.approx(diff.mean(), abs=1e-12)
    assert (challenger["ci_low"], challenger["ci_high"]) == pytest.approx((low, high), abs=1e-12)
    assert challenger["promoted"] == bool(low > 0)
    out = subprocess.run([sys.executable, "-m", "flows.cli", "history", "--config", "tldr", *overrides],
                         capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert "no champion yet" in lines[1] and "yes" in lines[1]          # first run: the first champion
    assert all("same model as the champion" in line for line in lines[2:-1])  # reruns of the same model
    assert ("yes" if challenger["promoted"] else "no") in lines[-1] and "the champion" in lines[-1]
    # One lineage: its data key is the data settings' digest, not the file's, so new rows meet the champion.
    settings = {f"data.{k}": v for k, v in load_config("tldr", overrides).data.items()}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    assert all(digest in line for line in lines[1:])


def test_promotion_settings_that_cannot_promote_fail_before_any_stage(harness, tmp_path):
    overrides = tiny_overrides(tmp_path, tmp_path / "no-teacher")
    for extra, message in ((["eval.systems=[teacher,sft]"], "promotion.enabled=true compares the PLaD student, but "
                            "eval.systems=\\['teacher', 'sft'\\] does not evaluate it"),
                           (["data.n_dev=0"], "promotion.enabled=true compares students on the dev split, but "
                            "data.n_dev=0")):
        with pytest.raises(ValueError, match=message):
            check_promotion(load_config("tldr", overrides + extra))
        with pytest.raises(ValueError, match=message):
            distill(config="tldr", overrides=overrides + extra)
        assert not (tmp_path / "artifacts").exists()
        check_promotion(load_config("tldr", overrides + extra + ["promotion.enabled=false"]))  # off: nothing to check


@pytest.mark.slow
def test_cli_pairs_show_prints_pairs(first_run):
    path = first_run["artifacts"]["build_pairs"]
    out = subprocess.run([sys.executable, "-m", "flows.cli", "pairs", "show", path, "-n", "2"],
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
    code = ("import sys, plad_core.stages, flows.cli; "
            "assert not any(m == 'prefect' or m.startswith('prefect.') for m in sys.modules), 'prefect imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# Every train.loss through the flow on first_run's store: only score_pairs, calibrate and evaluate are built.
FLOW_LOSSES = [loss for loss in LOSS_NAMES if loss != "ranking"]  # ranking is first_run's
FAST_EVAL = ["eval.systems=[sft,plad]", "eval.calibration_samples=0", "eval.judge.enabled=false",
             "eval.n_resamples=100", "promotion.enabled=false"]


@pytest.mark.slow
@pytest.mark.parametrize("loss", FLOW_LOSSES)
def test_every_train_loss_runs_through_the_flow(first_run, tiny, loss):
    root, overrides = tiny
    result = distill(config="tldr", overrides=overrides + [f"train.loss={loss}", *FAST_EVAL])
    paths = {s: Path(p) for s, p in result["artifacts"].items()}
    assert all(paths[s] == Path(first_run["artifacts"][s]) for s in STAGES[:STAGES.index("build_pairs") + 1])

    pairs = pd.read_parquet(paths["curate_pairs"] / "pairs.parquet")
    scores = pd.read_parquet(paths["score_pairs"] / "scores.parquet")
    assert list(scores.columns) == SCORES_SCHEMA.names and len(scores) == len(pairs)
    assert (scores[["id", "sample_index"]].to_numpy() == pairs[["id", "sample_index"]].to_numpy()).all()
    for scorer in SCORERS:  # computed exactly when the loss reads them
        stored = scores[list(stored_columns(scorer))]
        assert stored.notna().all().all() if scorer in STORED_SCORERS.get(loss, ()) else stored.isna().all().all()

    log = pd.read_parquet(paths["calibrate"] / "train_log.parquet")
    assert len(log) == math.ceil(len(pairs) / 2) and log["loss"].map(math.isfinite).all()
    assert log["pair_accuracy"].between(0, 1).all()
    assert json.loads((paths["calibrate"] / MANIFEST).read_text())["config"]["train"]["loss"] == loss
    assert ("teacher" in manifest(paths["calibrate"])["config"]) == (loss == "token_kd")
    assert sorted(result["metrics"]) == ["plad", "sft"]
    assert all(math.isfinite(v) for v in result["metrics"]["plad"].values())


@pytest.mark.slow
def test_stored_scores_equal_sequence_logprobs_recomputed(first_run, tiny):
    root, overrides = tiny
    store = ArtifactStore(root / "artifacts")
    for loss, scorer in (("dpo", "reference"), ("dpkd", "teacher")):
        cfg = load_config("tldr", overrides + [f"train.loss={loss}"])
        done = {}
        scores = pd.read_parquet(run_stage("score_pairs", cfg, store, done=done).file("scores.parquet"))
        pairs = pd.read_parquet(done["build_pairs"].file("pairs.parquet"))
        spec = str(done["sft_student"].file("model")) if scorer == "reference" else cfg.teacher.model
        model, tokenizer = load_model(spec, cfg.cache_dir)
        for row, (chosen, rejected) in zip(scores.itertuples(), encode_pairs(pairs, tokenizer, cfg.train.optim.max_seq_len)):
            for side, encoded in (("chosen", chosen), ("rejected", rejected)):
                with torch.no_grad():  # one unpadded sequence at a time
                    total, count = sequence_logprobs(model, collate([encoded], tokenizer.pad_token_id))
                assert getattr(row, f"{side}_scored_tokens") == count.item() == len(encoded.ids) - encoded.n_prompt
                assert getattr(row, f"{scorer}_{side}_logp") == pytest.approx(total.item(), abs=1e-4)


def test_an_unknown_loss_fails_before_any_stage_and_lists_the_valid_ones(harness, tmp_path):
    overrides = tiny_overrides(tmp_path, tmp_path / "no-teacher")
    with pytest.raises(ValueError, match="train.loss='dpo2' is not one of: ranking, margin, "
                                         "simpo, cpo_hinge, dpo, ipo, dpkd, seqkd, token_kd"):
        distill(config="tldr", overrides=overrides + ["train.loss=dpo2"])
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize("loss", ["dpkd", "token_kd"])
def test_teacher_internals_losses_refuse_an_api_teacher_naming_the_keys(harness, tmp_path, loss):
    overrides = tiny_overrides(tmp_path, tmp_path / "no-teacher") + [
        f"train.loss={loss}", "teacher.sampling.backend=openai", "teacher.sampling.api.model=served",
        "student.model=some/student", "eval.judge.enabled=false"]
    with pytest.raises(ValueError, match=f"train.loss={loss} needs the teacher's .* but teacher.sampling.backend=openai "
                                         "gives only its text: set teacher.sampling.backend=hf .*\\(ranking, margin, "
                                         "simpo, cpo_hinge, dpo, ipo, seqkd\\)"):
        distill(config="tldr", overrides=overrides)
    assert not (tmp_path / "artifacts").exists()
    check_train_loss(load_config("tldr", overrides + ["train.loss=ranking"]))  # a text-only loss is fine


@pytest.mark.slow
def test_teacher_internals_losses_refuse_a_teacher_with_another_tokenizer(first_run, tiny):
    root, overrides = tiny
    other = make_tiny_model(root / "other-tokenizer-teacher", layers=2)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<only-in-the-teacher>"])
    tokenizer.save_pretrained(other)
    store = ArtifactStore(root / "artifacts")
    done = {}
    run_stage("build_pairs", load_config("tldr", overrides), store, done=done)
    pairs, sft = done["build_pairs"], done["sft_student"]
    for loss in ("dpkd", "token_kd"):
        cfg = load_config("tldr", overrides + [f"train.loss={loss}", f"teacher.model={other}"])
        with pytest.raises(ValueError, match=f"train.loss={loss} needs the teacher's .* teacher.model={other} and the "
                                             "student do not share a tokenizer: the vocabularies differ \\(49152 vs "
                                             "49153 entries; 1 tokens in only one"):
            scores = run_score_pairs(cfg, store, pairs, sft)  # token_kd scores nothing, so this passes
            run_calibrate(cfg, store, pairs, sft, scores)


# --- evaluation: the judge, progress and results artifacts, the data-scale experiment ---------------
LEAN_EVAL = ["eval.systems=[sft,plad]", "eval.calibration_samples=0"]  # the judge stays on


def read_prefect_artifacts(key):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


@pytest.mark.slow
def test_flow_publishes_the_results_table_and_evaluate_progress(first_run):
    evaluate = Path(first_run["artifacts"]["evaluate"])
    metrics = json.loads((evaluate / "metrics.json").read_text())
    assert set(metrics["judge"]["vs"]["reference"]) == {"teacher", "sft", "plad"}
    assert metrics["judge"]["vs"]["sft"]["plad"]["n"] == 4 and metrics["settings"]["judge"]["rows"] == 4
    judgments = pd.read_parquet(evaluate / "judgments.parquet")
    assert len(judgments) == 4 * 5 * 2 + 4 * 2  # rows x (3 + 2 pairs) x orders, and a validity case per row x orders
    assert (judgments["opponent"] == "validity").sum() == 4 * 2 and metrics["judge"]["validity"]["n"] == 4

    # this run's artifacts: those its flow runs published beside the summary that names this evaluation's
    # report (other tests' flows, in this process or another pytest worker, share the Prefect database)
    runs = {a.flow_run_id for a in read_prefect_artifacts("distill-results")
            if str(evaluate / "report.html") in (a.description or "")}
    progress = [a for a in read_prefect_artifacts("evaluate-progress") if a.flow_run_id in runs]
    assert progress and all(a.type == "progress" and a.data == 100.0 for a in progress)  # every run ended at 100%
    assert any(str(evaluate / "report.html") in a.description for a in progress)

    plad = metrics["systems"]["plad"]
    tables = [json.loads(a.data) for a in read_prefect_artifacts("distill-results-table") if a.flow_run_id in runs]
    mine = [t for t in tables if [r["system"] for r in t] == ["teacher", "sft", "plad"]
            and t[2]["ROUGE-L"] == f"{plad['rougeL']:.2f} [{plad['rougeL_low']:.2f}, {plad['rougeL_high']:.2f}]"]
    win = metrics["judge"]["vs"]["reference"]["plad"]
    assert mine and mine[0][2]["win rate vs human reference"] == (
        f"{win['win_rate']:.1f} [{win['win_rate_low']:.1f}, {win['win_rate_high']:.1f}]")
    assert mine[0][1]["win rate vs SFT"] == "–" and mine[0][2]["n"] == "4"


@pytest.mark.slow
def test_evaluate_reports_progress_per_system_and_through_the_judge(first_run, tiny):
    from plad_core.stages import run_evaluate

    root, overrides = tiny
    cfg = load_config("tldr", overrides + LEAN_EVAL)
    store, done = ArtifactStore(cfg.artifacts_root), {}
    run_stage("calibrate", cfg, store, done=done)
    calls = []
    artifact = run_evaluate(cfg, store, done["prepare_data"], done["sft_student"], done["calibrate"], force=True,
                            progress=lambda fraction, message: calls.append((fraction, message)))
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert [m for _, m in calls if m.endswith("(0%)")] == [
        "generate sft (0%)", "generate plad (0%)", "judge (0%)", "metrics and report (0%)"]
    # 4 dev rows, one report per row: the judge step (the 3rd of 4) goes 2/4 -> 3/4 in quarters
    assert [(f, m) for f, m in calls if m.startswith("judge")] == [
        (0.5 + k / 16, f"judge ({k / 4:.0%})") for k in range(5)]
    judgments = pd.read_parquet(artifact.file("judgments.parquet"))
    assert len(judgments) == 4 * 3 * 2 + 4 * 2 and judgments["verdict"].isin(["A", "B"]).all()  # + validity cases


@pytest.mark.slow
def test_data_scale_runs_three_fractions_and_plots_pairs_used(first_run, tiny, tmp_path):
    from omegaconf import OmegaConf

    from flows.scale import distill_scale
    from plad_core.registry import Registry

    root, overrides = tiny
    experiment = tmp_path / "tiny_scale.yaml"
    OmegaConf.save(OmegaConf.create({"name": "tiny_scale", "config": "tldr", "fractions": [0.25, 0.5, 1.0],
                                     "metric": "rougeL", "overrides": overrides + LEAN_EVAL}), experiment)
    decisions = len(Registry(root / "artifacts" / "registry.sqlite").history())
    result = distill_scale(experiment=str(experiment))
    folder = Path(result["artifact"])
    points = json.loads((folder / "scale.json").read_text())["points"]
    assert [p["fraction"] for p in points] == [0.25, 0.5, 1.0]
    assert [p["prompts"] for p in points] == [2, 3, 6]  # ceil(f * 6 unlabeled prompts)

    rows = pd.read_parquet(Path(first_run["artifacts"]["prepare_data"]) / "rows.parquet")
    unlabeled = list(rows.loc[rows["split"] == "unlabeled", "id"])  # the split's sha256 order
    store = ArtifactStore(root / "artifacts")
    for point in points:
        pairs_dir = store.path("build_pairs", point["keys"]["build_pairs"])
        pairs = pd.read_parquet(store.path("curate_pairs", point["keys"]["curate_pairs"]) / "pairs.parquet")
        assert point["pairs"] == len(pairs) and set(pairs["id"]) <= set(unlabeled[:point["prompts"]])
        # everything before build_pairs is shared with first_run: built once, reused from the store
        upstream = manifest(pairs_dir)["upstream"]
        for stage in ("prepare_data", "sample_teacher", "sample_student"):
            assert upstream[stage] == Path(first_run["artifacts"][stage]).name
        assert set(point["systems"]) == {"sft", "plad"}
    assert points[-1]["keys"]["build_pairs"] == Path(first_run["artifacts"]["build_pairs"]).name
    assert result["points"] == [{k: p[k] for k in ("fraction", "prompts", "pairs")} for p in points]

    md = (folder / "report.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and "%" in line.split("|")[1]]
    assert [line.split(" | ")[:3] for line in table] == [
        [f"| {f}", str(p["prompts"]), str(p["pairs"])] for f, p in zip(("25%", "50%", "100%"), points)]
    assert (folder / "plots" / "scale.png").read_bytes().startswith(b"\x89PNG") and "](plots/scale.png)" in md
    assert len(Registry(root / "artifacts" / "registry.sqlite").history()) == decisions  # promotion stayed off
