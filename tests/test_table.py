"""The table experiment (plad_core.experiments, flow distill-table): its schema and numbers by hand, and a
whole tiny table (2 trained systems x 2 seeds) through the flow."""

import dataclasses
import hashlib
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf
from tiny import make_tiny_model, tiny_overrides

from plad_core.artifacts import MANIFEST, ArtifactStore
from plad_core.config import ConfigError, load_config
from plad_core.evaluation.judge import pair_outcomes
from plad_core.evaluation.metrics import repeated_ngram_share
from plad_core.experiments.files import experiment_path
from plad_core.experiments.table import (
    TableExperiment,
    TableSystem,
    Tuning,
    check_experiment,
    load_experiment,
    run_overrides,
    tuning_choice,
    tuning_experiment,
)
from plad_core.experiments.table_data import EvalPoint
from plad_core.experiments.table_results import (
    judge_win_rates,
    pair_accuracy,
    pair_quality,
    seed_mean,
    training_summary,
)
from plad_core.report.text import ci_text

# --- the experiment files ---------------------------------------------------------------------------

def _overrides(system):
    return dict(o.split("=", 1) for o in system.overrides)


def test_shipped_experiments_load_and_their_tuning_grid_expands():
    exp = load_experiment("tldr_table")
    assert [s.name for s in exp.systems] == ["SeqKD", "token KD", "DPKD", "PLaD-ranking", "PLaD-margin"]
    assert exp.seeds == [0, 1, 2] and exp.config == "demo"
    losses = [load_config(exp.config, run_overrides(exp, s, 2)).train for s in exp.systems]
    assert [t.loss for t in losses] == ["seqkd", "token_kd", "dpkd", "ranking", "margin"]
    assert {t.optim.seed for t in losses} == {2} and losses[2].beta == float(_overrides(exp.systems[2])["train.beta"])

    tuning = tuning_experiment(exp)
    grid = exp.tuning.grid
    assert len(tuning.systems) == math.prod(len(v) for v in grid.values()) and tuning.seeds == [exp.tuning.seed]
    assert tuning.overrides[-2:] == ["eval.calibration_samples=0", "eval.judge.enabled=false"]
    assert tuning.systems[0].name == " ".join(f"{k.rsplit('.', 1)[-1]}={v[0]}" for k, v in grid.items())
    cfg = load_config(tuning.config, run_overrides(tuning, tuning.systems[-1], 0))
    assert cfg.train.loss == "ranking"
    assert [OmegaConf.select(cfg, k) for k in grid] == [v[-1] for v in grid.values()]
    # the file holds config only: no results, and both PLaD systems train with the chosen point
    assert not {"status", "results"} & set(OmegaConf.load(experiment_path("tldr_table"))["tuning"])
    for plad in losses[3:]:
        assert {k: OmegaConf.select(OmegaConf.create({"train": plad}), k) for k in exp.tuning.chosen} == exp.tuning.chosen

    gpu = load_experiment("tldr_table_gpu")
    cfg = load_config(gpu.config, run_overrides(gpu, gpu.systems[1], 0))
    assert (cfg.teacher.model, cfg.student.model, cfg.device, cfg.train.loss) == (
        "Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", "cuda", "token_kd")


@pytest.mark.parametrize("systems, message", [
    ([{"name": "A", "overrides": ["eval.dtype=float32"]}], "override 'eval.dtype=float32': systems differ only in training"),
    ([{"name": "A", "overrides": ["train.optim.seed=3"]}], "not train.optim.seed"),
    ([{"name": "SFT"}], "systems\\[0\\].name 'SFT': the teacher and SFT are always in the table"),
    ([{"name": "A"}, {"name": "A"}], "systems need distinct names, got \\['A', 'A'\\]"),
    ([{"name": "A", "overridez": []}], "Key 'overridez' not in 'TableSystem'"),
])
def test_bad_experiment_files_fail_naming_the_file_and_the_system(tmp_path, systems, message):
    path = tmp_path / "bad.yaml"
    OmegaConf.save(OmegaConf.create({"name": "bad", "systems": systems}), path)
    with pytest.raises(ConfigError, match=f"{path}.*{message}"):
        load_experiment(str(path))


# --- the numbers, by hand ---------------------------------------------------------------------------

def test_tuning_choice_is_the_highest_rouge_l_point_and_needs_every_point():
    exp = TableExperiment(systems=[TableSystem("P", ["train.loss=ranking"])],
                          tuning=Tuning(system="P", grid={"train.beta": [0.5, 1.0], "train.optim.lr": [1e-5, 3e-5]}))
    scores = {"beta=0.5 lr=1e-05": 10.0, "beta=0.5 lr=3e-05": 9.0, "beta=1.0 lr=1e-05": 12.5,
              "beta=1.0 lr=3e-05": 12.0, "teacher": 20.0, "sft": 13.0}  # fixed systems are not grid points
    assert tuning_choice(exp, scores) == {"P": ("beta=1.0 lr=1e-05", {"train.beta": 1.0, "train.optim.lr": 1e-5})}
    with pytest.raises(ValueError, match=r"no ROUGE-L for grid points \['beta=1.0 lr=3e-05'\]"):
        tuning_choice(exp, {k: v for k, v in scores.items() if k != "beta=1.0 lr=3e-05"})


def test_tuning_gives_every_tuned_system_the_same_grid_and_chooses_for_each_apart():
    exp = check_experiment(TableExperiment(
        systems=[TableSystem("SeqKD", ["train.loss=seqkd"]), TableSystem("P", ["train.loss=ranking"])],
        tuning=Tuning(system="P", systems=["SeqKD"], grid={"train.optim.lr": [1e-5, 3e-5]}, rows=40)), "exp")
    tuning = tuning_experiment(exp)
    assert [(s.name, s.overrides) for s in tuning.systems] == [
        ("P lr=1e-05", ["train.loss=ranking", "train.optim.lr=1e-05"]),
        ("P lr=3e-05", ["train.loss=ranking", "train.optim.lr=3e-05"]),
        ("SeqKD lr=1e-05", ["train.loss=seqkd", "train.optim.lr=1e-05"]),
        ("SeqKD lr=3e-05", ["train.loss=seqkd", "train.optim.lr=3e-05"])]
    assert tuning.tune_rows == 40 and exp.tune_rows == 0  # the tuning table scores the slice, the table dev
    scores = {"P lr=1e-05": 11.0, "P lr=3e-05": 12.0, "SeqKD lr=1e-05": 14.0, "SeqKD lr=3e-05": 13.0}
    assert tuning_choice(exp, scores) == {"P": ("P lr=3e-05", {"train.optim.lr": 3e-5}),
                                          "SeqKD": ("SeqKD lr=1e-05", {"train.optim.lr": 1e-5})}
    with pytest.raises(ConfigError, match=r"exp: tuning.system/tuning.systems/tuning.grids \['KD'\] must name systems"):
        check_experiment(dataclasses.replace(exp, tuning=Tuning(system="P", systems=["KD"], grid={"train.beta": [1]})),
                         "exp")


def test_a_baseline_can_be_tuned_on_its_own_lever_with_as_many_points_as_plad():
    exp = check_experiment(TableExperiment(
        systems=[TableSystem("SeqKD", ["train.loss=seqkd"]), TableSystem("P", ["train.loss=ranking"])],
        tuning=Tuning(system="P", grid={"train.nll_weight": [0.0, 1.0]},
                      grids={"SeqKD": {"train.optim.lr": [1e-5, 3e-5]}}, rows=40)), "exp")
    assert [(s.name, s.overrides) for s in tuning_experiment(exp).systems] == [
        ("P nll_weight=0.0", ["train.loss=ranking", "train.nll_weight=0.0"]),
        ("P nll_weight=1.0", ["train.loss=ranking", "train.nll_weight=1.0"]),
        ("SeqKD lr=1e-05", ["train.loss=seqkd", "train.optim.lr=1e-05"]),
        ("SeqKD lr=3e-05", ["train.loss=seqkd", "train.optim.lr=3e-05"])]
    scores = {"P nll_weight=0.0": 9.0, "P nll_weight=1.0": 12.0, "SeqKD lr=1e-05": 11.0, "SeqKD lr=3e-05": 11.5}
    assert tuning_choice(exp, scores) == {"P": ("P nll_weight=1.0", {"train.nll_weight": 1.0}),
                                          "SeqKD": ("SeqKD lr=3e-05", {"train.optim.lr": 3e-5})}
    three = Tuning(system="P", grid={"train.nll_weight": [0.0, 0.5, 1.0]},
                   grids={"SeqKD": {"train.optim.lr": [1e-5, 3e-5]}})
    with pytest.raises(ConfigError, match=r"exp: tuning grids of different sizes \{'P': 3, 'SeqKD': 2\}"):
        check_experiment(dataclasses.replace(exp, tuning=three), "exp")
    with pytest.raises(ConfigError, match=r"exp: tuning.grids.SeqKD keys \['eval.dtype'\] must be train"):
        check_experiment(dataclasses.replace(exp, tuning=Tuning(system="P", grid={"train.beta": [1.0]},
                                                                grids={"SeqKD": {"eval.dtype": ["float32"]}})), "exp")


def test_the_tuning_slice_is_the_files_rows_in_no_split_smallest_hash_first(tmp_path):
    from plad_core.data import DataError
    from plad_core.stages.tune_data import unused_rows
    rows = [{"id": f"r{i}"} for i in range(10)]
    used = {"r0", "r3", "r4", "r7"}
    by_hand = sorted((r for r in rows if r["id"] not in used), key=lambda r: hashlib.sha256(
        f"salt:{r['id']}".encode()).hexdigest())[:3]
    assert unused_rows(rows, used, 3, "salt", "f.jsonl") == by_hand
    with pytest.raises(DataError, match=r"f.jsonl: the tuning slice needs 7 rows .* only 6 of the file's 10 rows"):
        unused_rows(rows, used, 7, "salt", "f.jsonl")


def test_seed_mean_averages_each_dev_row_over_the_seeds():
    rows = pd.DataFrame({"system": ["A@0", "A@0", "A@1", "A@1", "sft", "sft"], "id": ["r1", "r2"] * 3,
                         "rouge1": [0.2, 0.4, 0.4, 0.0, 0.1, 0.1], "rouge2": [0.0] * 6,
                         "rougeL": [0.1, 0.3, 0.3, 0.1, 0.2, 0.2], "output_tokens": [10, 20, 30, 40, 5, 5]})
    averaged = seed_mean(rows, {"A": ["A@0", "A@1"], "sft": ["sft"]}).set_index(["system", "id"])
    assert averaged.loc[("A", "r1"), "rougeL"] == pytest.approx(0.2)
    assert averaged.loc[("A", "r2"), "rouge1"] == pytest.approx(0.2)
    assert averaged.loc[("A", "r2"), "output_tokens"] == 30
    assert averaged.loc[("sft", "r1"), "rougeL"] == pytest.approx(0.2) and len(averaged) == 4


def test_judge_win_rates_average_each_rows_score_over_the_seeds():
    # A@0 wins r1 (both orders), loses r2; A@1 ties r1 (verdicts disagree), wins r2 -> per row 0.75 and 0.5
    # (a text judge: no log-probs, so both verdicts decide)
    verdicts = {("A@0", "r1"): "AB", ("A@0", "r2"): "BA", ("A@1", "r1"): "AA", ("A@1", "r2"): "AB"}
    judgments = pd.DataFrame([{"id": row, "system": label, "opponent": "reference", "system_position": pos,
                               "verdict": verdict, "logp_a": math.nan, "logp_b": math.nan, "raw": verdict}
                              for (label, row), chosen in verdicts.items() for pos, verdict in zip("AB", chosen)])
    wins = judge_win_rates(pair_outcomes(judgments), {"A": ["A@0", "A@1"]}, 1000, 0)["A"]["reference"]
    assert wins["win_rate"] == pytest.approx(100 * (0.75 + 0.5) / 2) and wins["n"] == 2
    assert wins["win_rate_low"] <= wins["win_rate"] <= wins["win_rate_high"]
    assert wins["consistency"] == 75.0  # 3 of the 4 (seed, row) pairs gave one answer in both orders


def test_repeated_ngram_share_counts_trigrams_seen_earlier_in_the_same_text():
    assert repeated_ngram_share("a b c a b c") == pytest.approx(1 / 4)  # abc bca cab abc: the last repeats
    assert repeated_ngram_share("I'm not sure, I'm not sure, I'm not sure,") == pytest.approx(4 / 7)
    assert repeated_ngram_share("A b C a B c") == pytest.approx(1 / 4)  # lower-cased
    assert repeated_ngram_share("a b c d") == 0.0 and repeated_ngram_share("two words") == 0.0


def test_pair_accuracy_compares_per_token_log_likelihoods():
    frame = pd.DataFrame({"reference_chosen_logp": [-10.0, -30.0, -8.0], "chosen_scored_tokens": [10, 10, 4],
                          "reference_rejected_logp": [-40.0, -20.0, -4.0], "rejected_scored_tokens": [20, 10, 2]})
    # per token: -1 vs -2 (y_T ahead), -3 vs -2 (behind), -2 vs -2 (a tie is not ahead)
    assert pair_accuracy(frame) == pytest.approx(100 / 3, abs=0.01)
    assert pair_accuracy(frame.iloc[:0]) is None


def test_pair_quality_counts_where_the_teacher_output_is_closer_to_the_reference():
    pairs = pd.DataFrame({"chosen": ["the cat sat", "a dog ran", "x y z"], "rejected": ["the cat", "a dog ran", "q"],
                          "reference": ["the cat sat", "a dog ran far", None],
                          "chosen_tokens": [3, 3, 3], "rejected_tokens": [2, 3, 1]})
    q = pair_quality(pairs, 1000, 0)
    # row 1: chosen F1 1.0, rejected 2*(1*2/3)/(1+2/3) = 0.8; row 2: equal; row 3 has no reference
    assert q.with_reference == 2 and q.pairs == 3
    assert (q.chosen_better, q.ties, q.rejected_better) == (50.0, 50.0, 0.0)
    assert q.difference == pytest.approx(100 * (1.0 - 0.8) / 2, abs=0.01)
    assert q.chosen_rougeL == pytest.approx(100 * (1.0 + 2 * 0.75 / 1.75) / 2, abs=0.01)


def test_discussion_sets_the_pairs_before_curation_beside_the_kept_ones():
    from types import SimpleNamespace

    from plad_core.report.table_discussion import _pair_quality_paragraph
    built = pd.DataFrame({"chosen": ["the cat sat", "a dog ran", "loop loop loop loop loop"],
                          "rejected": ["the cat", "a dog ran", "the bird flew"],
                          "reference": ["the cat sat", "a dog ran far", "the bird flew"],
                          "chosen_tokens": [3, 3, 5], "rejected_tokens": [2, 3, 3]})
    kept = built.iloc[:2]
    result = SimpleNamespace(settings=SimpleNamespace(n_resamples=200), pairs=pair_quality(kept, 200, 0),
                             pairs_built=pair_quality(built, 200, 0))
    (text,) = _pair_quality_paragraph(result)
    # before: y_T ahead on row 1 (1.0 vs 0.8), tied on row 2, behind on row 3 (0 vs 1.0): one third each
    assert "Before curation (3 pairs, 1 of them dropped by curate_pairs): y_T higher in 33.3% (equal 33.3%, lower 33.3%)" in text
    assert f"mean ROUGE-L {100 * (1.0 + 2 * 0.75 / 1.75 + 0) / 3:.2f} vs {100 * (0.8 + 2 * 0.75 / 1.75 + 1.0) / 3:.2f}" in text
    result.pairs_built = result.pairs
    assert "Curation dropped no pair" in _pair_quality_paragraph(result)[0]


def test_training_summary_reads_quarters_and_the_held_out_curve():
    log = pd.DataFrame({"step": range(1, 9), "epoch": [0] * 4 + [1] * 4,
                        "loss": [4.0, 2.0, 3.0, 3.0, 2.0, 2.0, 1.0, 0.0],
                        "pair_accuracy": [0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0],
                        "eval_loss": [None, 3.0, None, 2.5, None, 2.0, None, 2.25],
                        "eval_pair_accuracy": [None, 0.25, None, 0.5, None, 0.5, None, 0.75]})
    t = training_summary(log, {"held_out_pairs": 4}, 25.0)
    assert (t.steps, t.epochs, t.quarter_steps) == (8, 2, 2)
    assert (t.loss_start, t.loss_end, t.pair_accuracy_start, t.pair_accuracy_end) == (3.0, 0.5, 25.0, 100.0)
    assert t.eval_first == EvalPoint(step=2, loss=3.0, pair_accuracy=25.0)
    assert t.eval_best == EvalPoint(step=6, loss=2.0, pair_accuracy=50.0)
    assert t.eval_last == EvalPoint(step=8, loss=2.25, pair_accuracy=75.0)
    assert t.eval_loss_rise == 0.25 and t.evaluations == 4 and t.sft_held_out_pair_accuracy == 25.0


# --- a whole tiny table through the flow ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    from flows.table import distill_table

    root = tmp_path_factory.mktemp("table")
    overrides = tiny_overrides(root, make_tiny_model(root / "teacher", layers=4)) + [
        f"student.model={make_tiny_model(root / 'student', layers=2, seed=1)}",  # no slicing and healing to test here
        "eval.dtype=float32", "eval.stop=[]",  # bf16 matmuls and stop strings cost more than tiny models' generation
        "eval.calibration_samples=2", "eval.calibration_rows=2", "eval.judge.rows=2", "eval.judge.max_tokens=128",
        "train.eval_fraction=0.34", "train.eval_every=1"]  # 2 of the 6 pairs held out, evaluated every step
    path = root / "tiny_table.yaml"
    OmegaConf.save(OmegaConf.structured(TableExperiment(
        name="tiny_table", config="tldr", overrides=overrides, seeds=[0, 1],
        systems=[TableSystem("SeqKD", ["train.loss=seqkd"]), TableSystem("PLaD-ranking", ["train.loss=ranking"])])), path)
    with prefect_test_harness(server_startup_timeout=120):
        first = distill_table(experiment=str(path))
        again = distill_table(experiment=str(path))
    return root, first, again


@pytest.mark.slow
def test_table_has_every_system_and_seed_with_sft_and_teacher_outputs_built_once(tiny_table):
    root, first, again = tiny_table
    folder = Path(first["artifact"])
    result = json.loads((folder / "table.json").read_text())
    assert list(result["systems"]) == ["teacher", "sft", "SeqKD", "PLaD-ranking"]
    assert [(r["system"], r["seed"]) for r in result["runs"]] == [("SeqKD", 0), ("SeqKD", 1), ("PLaD-ranking", 0),
                                                                   ("PLaD-ranking", 1)]
    assert len({r["calibrate_key"] for r in result["runs"]}) == 4

    store = ArtifactStore(root / "artifacts")
    built = [json.loads(p.read_text()) for p in sorted((root / "artifacts" / "dev_outputs").glob(f"*/{MANIFEST}"))]
    assert len(built) == 2 + 4  # teacher and SFT once, one per trained model and seed
    models = sorted(tuple(sorted(m["upstream"])) for m in built)
    assert models == [("calibrate", "prepare_data")] * 4 + [("prepare_data",), ("prepare_data", "sft_student")]
    # the second run rebuilt nothing: same table, the same six dev outputs
    assert again["artifact"] == first["artifact"]
    assert len(list((root / "artifacts" / "dev_outputs").glob(f"*/{MANIFEST}"))) == 6

    # a trained system's metrics are its per-row means over the seeds; Δ vs SFT is per row too
    frames = {r["label"]: pd.read_parquet(store.path("dev_outputs", r["dev_outputs_key"]) / "generations.parquet")
              for r in result["runs"]}
    sft = pd.read_parquet(store.path("dev_outputs", result["keys"]["dev_outputs sft"]) / "generations.parquet")
    plad = pd.concat([frames["PLaD-ranking@0"], frames["PLaD-ranking@1"]]).groupby("id")[["rougeL", "output_tokens"]].mean()
    metrics = result["systems"]["PLaD-ranking"]["metrics"]
    assert metrics["n"] == 4 and metrics["mean_output_tokens"] == pytest.approx(plad["output_tokens"].mean(), abs=0.01)
    assert metrics["rougeL"] == pytest.approx(100 * plad["rougeL"].mean(), abs=0.01)
    difference = (plad["rougeL"] - sft.set_index("id")["rougeL"]).mean()
    assert result["systems"]["PLaD-ranking"]["vs_sft"]["difference"] == pytest.approx(100 * difference, abs=0.01)
    assert [(c["a"], c["b"]) for c in result["comparisons"]] == [("PLaD-ranking", "SeqKD")]
    # ROUGE-1 and ROUGE-2 are paired the same way, against SFT and against each baseline
    seqkd = pd.concat([frames["SeqKD@0"], frames["SeqKD@1"]]).groupby("id")[["rouge1", "rouge2"]].mean()
    plad2 = pd.concat([frames["PLaD-ranking@0"], frames["PLaD-ranking@1"]]).groupby("id")[["rouge1", "rouge2"]].mean()
    assert result["systems"]["PLaD-ranking"]["vs_sft_by_metric"]["rouge2"]["difference"] == pytest.approx(
        100 * (plad2["rouge2"] - sft.set_index("id")["rouge2"]).mean(), abs=0.01)
    assert result["comparisons"][0]["by_metric"]["rouge1"]["difference"] == pytest.approx(
        100 * (plad2["rouge1"] - seqkd["rouge1"]).mean(), abs=0.01)


@pytest.mark.slow
def test_table_judges_calibrates_and_reads_training_and_pairs(tiny_table):
    root, first, _ = tiny_table
    folder = Path(first["artifact"])
    result = json.loads((folder / "table.json").read_text())
    store = ArtifactStore(root / "artifacts")
    judgments = pd.read_parquet(store.path("judgments", result["keys"]["judgments"]) / "judgments.parquet")
    # 2 rows x (6 systems vs reference + 5 vs SFT) x both orders, and 2 known-answer cases x both orders
    assert len(judgments) == 2 * (6 + 5) * 2 + 2 * 2 and result["judge"]["validity"]["n"] == 2
    for system, s in result["systems"].items():
        assert s["judge"]["reference"]["n"] == 2 and ("sft" in s["judge"]) == (system != "sft")
        assert (s["calibration"] is None) == (system == "teacher")
    assert set(result["systems"]["SeqKD"]["calibration"]["per_seed"]) == {"SeqKD@0", "SeqKD@1"}

    pairs = pd.read_parquet(store.path("build_pairs", result["keys"]["build_pairs"]) / "pairs.parquet")
    scores = pd.read_parquet(store.path("score_pairs", result["keys"]["score_pairs (SFT log-probs)"]) / "scores.parquet")
    ahead = (scores["reference_chosen_logp"] / scores["chosen_scored_tokens"]
             > scores["reference_rejected_logp"] / scores["rejected_scored_tokens"])
    p = result["pairs"]
    assert p["pairs"] == len(pairs) and p["sft_pair_accuracy"] == pytest.approx(100 * ahead.mean(), abs=0.01)
    assert p["chosen_better"] + p["ties"] + p["rejected_better"] == pytest.approx(100)
    assert result["pairs_built"]["pairs"] == len(pairs)  # build_pairs' own file: the pairs before curation
    for run in result["runs"]:
        t = run["training"]
        log = pd.read_parquet(store.path("calibrate", run["calibrate_key"]) / "train_log.parquet")
        assert t["held_out_pairs"] == 2 and t["steps"] == len(log) == math.ceil((len(pairs) - 2) / 2)  # batches of 2
        assert t["eval_last"]["step"] == 2 and t["eval_last"]["pair_accuracy"] == 100 * log["eval_pair_accuracy"].iloc[-1]
        assert t["sft_held_out_pair_accuracy"] in (0.0, 50.0, 100.0)

    summary = (folder / "summary.md").read_text()
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in summary.splitlines() if line.startswith("| ")}
    for label, system in [("Teacher", "teacher"), ("SFT", "sft"), ("SeqKD", "SeqKD"), ("PLaD-ranking", "PLaD-ranking")]:
        assert rows[label][3] == ci_text(result["systems"][system]["metrics"], "rougeL")
    assert rows["SFT"][4] == "–" and rows["SeqKD"][4].startswith(f"{result['systems']['SeqKD']['vs_sft']['difference']:+.2f} [")
    shares = [repeated_ngram_share(text) for seed in (0, 1) for text in pd.read_parquet(
        store.path("dev_outputs", result["keys"][f"dev_outputs SeqKD@{seed}"]) / "generations.parquet")["text"]]
    assert result["systems"]["SeqKD"]["repeated_trigrams"] == pytest.approx(100 * sum(shares) / len(shares), abs=0.05)
    threshold = result["settings"]["loop_threshold"]
    assert result["systems"]["SeqKD"]["looping_outputs"] == pytest.approx(
        100 * sum(x > threshold for x in shares) / len(shares), abs=0.05)
    report = (folder / "report.md").read_text()
    assert "## Discussion" in report and "Is the teacher's output really better?" in report
    assert "Length and repetition" in report
    assert (folder / "report.html").read_text().count('<img src="data:image/png;base64,') == 1


# --- a tiny tuning grid through the flow: its artifact is the record --------------------------------

@pytest.fixture(scope="module")
def tiny_tuning(tiny_table, tmp_path_factory):
    """The tiny table's experiment with a 2-point grid, tuned in a copy of its store (the shared stages reused)."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.table import distill_table

    root, _, _ = tiny_table
    copy = tmp_path_factory.mktemp("tuning")
    shutil.copytree(root / "artifacts", copy / "artifacts")
    exp = OmegaConf.load(root / "tiny_table.yaml")
    exp.overrides.append(f"artifacts_root={copy / 'artifacts'}")
    exp.tuning = {"system": "PLaD-ranking", "grid": {"train.beta": [0.5, 2.0]}, "seed": 0, "rows": 4}
    OmegaConf.save(exp, copy / "tiny_table.yaml")
    with prefect_test_harness(server_startup_timeout=120):
        tuned = distill_table(experiment=str(copy / "tiny_table.yaml"), tune=True)
    return copy, tuned


@pytest.mark.slow
def test_tuning_records_every_points_dev_rouge_l_and_chooses_the_highest(tiny_tuning):
    root, tuned = tiny_tuning
    store = ArtifactStore(root / "artifacts")
    result = json.loads((Path(tuned["artifact"]) / "table.json").read_text())
    assert tuned["experiment"] == "tiny_table_tuning"
    assert [(r["system"], r["seed"]) for r in result["runs"]] == [("beta=0.5", 0), ("beta=2.0", 0)]
    # each point's dev ROUGE-L recomputed from its generations, and the winner from those
    rouge_l = {r["system"]: 100 * pd.read_parquet(store.path("dev_outputs", r["dev_outputs_key"])
                                                  / "generations.parquet")["rougeL"].mean() for r in result["runs"]}
    manifest = json.loads((Path(tuned["artifact"]) / MANIFEST).read_text())
    for point, value in rouge_l.items():
        assert manifest["stats"]["rougeL"][point] == pytest.approx(value, abs=0.01)
    chosen = tuned["chosen"]["PLaD-ranking"]["point"]
    assert rouge_l[chosen] == pytest.approx(max(rouge_l.values()), abs=0.01)  # the highest (ties: within rounding)
    assert tuned["chosen"]["PLaD-ranking"]["values"] == {"train.beta": float(chosen.split("=")[1])}
    # every model was scored on 4 labeled rows of the file that no split holds, not on dev
    tune = json.loads((store.path("tune_data", result["keys"]["tune_data"]) / MANIFEST).read_text())
    rows = pd.read_parquet(store.path("prepare_data", tune["upstream"]["prepare_data"]) / "rows.parquet")
    scored = {frozenset(pd.read_parquet(store.path("dev_outputs", key) / "generations.parquet")["id"])
              for name, key in result["keys"].items() if name.startswith("dev_outputs")}
    assert len(scored) == 1
    (ids,) = scored
    assert len(ids) == 4 and not ids & set(rows["id"]) and result["settings"]["dev_rows"] == 4
