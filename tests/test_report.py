"""Evaluation metrics (ROUGE, calibration, length buckets) against hand-computed values, and the report writer."""

import base64
import json
import math
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from rouge_score import rouge_scorer

from plad_core import evaluate as eval_lib
from plad_core.calibration import (above_median, average_ranks, evaluate_calibration, expected_calibration_error,
                                   prompt_spearman, reliability_bins, spearman)
from plad_core.judge import opponents
from plad_core.report import write_report

# --- ROUGE ---------------------------------------------------------------------------------------

KNOWN = [  # (prediction, reference, hand-computed ROUGE-1, ROUGE-2, ROUGE-L F1)
    # 5 of 6 unigrams shared; bigrams "the cat", "on the", "the mat" of 5; LCS "the cat on the mat" (5 of 6)
    ("the cat sat on the mat", "the cat is on the mat", 5 / 6, 3 / 5, 5 / 6),
    # stemming: "running"/"runs" -> "run"; P = 2/2, R = 2/3 -> F = 0.8; bigram "dog run" of 1 and 2 -> 2/3
    ("dog running", "the dog runs", 0.8, 2 / 3, 0.8),
    ("completely different words", "nothing in common here", 0.0, 0.0, 0.0),
]


def test_our_rouge_equals_rouge_score_and_hand_values():
    predictions, references = [k[0] for k in KNOWN], [k[1] for k in KNOWN]
    ours = eval_lib.rouge_f1(predictions, references, use_stemmer=True)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for row, (prediction, reference, r1, r2, rl) in enumerate(KNOWN):
        theirs = scorer.score(reference, prediction)
        for name, hand in zip(("rouge1", "rouge2", "rougeL"), (r1, r2, rl)):
            assert ours.loc[row, name] == pytest.approx(theirs[name].fmeasure, abs=1e-12)
            assert ours.loc[row, name] == pytest.approx(hand, abs=1e-9), (row, name)


def test_system_summary_has_a_ci_around_each_mean():
    frame = pd.DataFrame({"rouge1": [0.1, 0.3, 0.5, 0.7], "rouge2": [0.0, 0.1, 0.2, 0.3],
                          "rougeL": [0.2, 0.2, 0.4, 0.4], "output_tokens": [10, 20, 30, 40]})
    m = eval_lib.system_summary(frame, n_resamples=1000, seed=0)
    assert (m["rouge1"], m["rouge2"], m["rougeL"], m["mean_output_tokens"], m["n"]) == (40.0, 15.0, 30.0, 25.0, 4)
    for name in ("rouge1", "rouge2", "rougeL", "mean_output_tokens"):
        assert m[f"{name}_low"] <= m[name] <= m[f"{name}_high"]
        assert m[f"{name}_low"] < m[f"{name}_high"]
    assert eval_lib.system_summary(frame, 1000, 0) == m  # seeded


def test_paired_comparison_aligns_rows_by_id():
    a = pd.DataFrame({"id": ["x", "y", "z"], "rougeL": [0.5, 0.6, 0.7]})
    b = pd.DataFrame({"id": ["z", "x", "y"], "rougeL": [0.6, 0.4, 0.5]})  # every row 0.1 lower, shuffled
    p = eval_lib.paired_comparison(a, b, "rougeL", 1000, 0)
    assert p["difference"] == pytest.approx(10.0) and p["low"] == pytest.approx(10.0)
    assert p["high"] == pytest.approx(10.0) and p["p_value"] == 0.0 and p["n"] == 3


# --- calibration ---------------------------------------------------------------------------------

def test_average_ranks_and_spearman_by_hand():
    assert list(average_ranks([10, 30, 20, 20])) == [1.0, 4.0, 2.5, 2.5]
    # no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 60 = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties: ranks [1, 2.5, 2.5, 4] vs [1, 2, 3, 4]: cov 4.5, var 4.5 and 5 -> rho = sqrt(0.9)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9))
    assert spearman([4, 3, 2, 1], [1, 2, 3, 4]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1], [2]) is None
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, 12), rng.normal(size=12)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


def test_prompt_spearman_skips_and_counts_constant_prompts():
    samples = pd.DataFrame({
        "id": ["a"] * 4 + ["b"] * 4 + ["c"] * 4,
        "logp_mean": [-1, -2, -3, -4, -1, -2, -3, -4, -1, -1, -1, -1],
        "rougeL": [0.4, 0.3, 0.2, 0.1, 0.1, 0.3, 0.2, 0.4, 0.1, 0.2, 0.3, 0.4]})
    rhos, skipped = prompt_spearman(samples)
    assert rhos == pytest.approx([1.0, -0.8]) and skipped == 1  # c: constant log-likelihood


def test_ece_and_reliability_bins_by_hand():
    confidence, outcome = [0.05, 0.15, 0.12, 0.95], [0, 1, 0, 1]
    # bin 0: {0.05} rate 0 conf 0.05; bin 1: {0.15, 0.12} rate 0.5 conf 0.135; bin 9: {0.95} rate 1 conf 0.95
    # ECE = 1/4 * 0.05 + 2/4 * 0.365 + 1/4 * 0.05 = 0.2075
    assert expected_calibration_error(confidence, outcome, 10) == pytest.approx(0.2075)
    bins = reliability_bins(confidence, outcome, 10)
    assert [b["count"] for b in bins] == [1, 1 + 1, 0, 0, 0, 0, 0, 0, 0, 1]
    assert bins[1]["confidence"] == pytest.approx(0.135) and bins[1]["accuracy"] == 0.5
    assert bins[2]["accuracy"] is None
    assert expected_calibration_error([1.0, 0.0], [1, 0], 10) == 0.0  # 1.0 falls in the last, closed bin
    assert expected_calibration_error([0.3, 0.3], [1, 1], 1) == pytest.approx(0.7)
    assert expected_calibration_error([], [], 10) is None


def test_above_median_is_strict_within_each_prompt():
    samples = pd.DataFrame({"id": ["a"] * 4 + ["b"] * 4,
                            "rougeL": [0.1, 0.2, 0.3, 0.4, 0.2, 0.2, 0.2, 0.5]})
    assert list(above_median(samples)) == [0, 0, 1, 1, 0, 0, 0, 1]  # medians 0.25 and 0.2


def test_evaluate_calibration_on_a_tiny_example():
    samples = pd.DataFrame({
        "id": ["a"] * 4 + ["b"] * 4,
        "logp_mean": np.log([0.9, 0.7, 0.3, 0.1, 0.5, 0.5, 0.5, 0.5]),
        "rougeL": [0.4, 0.3, 0.2, 0.1, 0.3, 0.3, 0.3, 0.3]})  # b: all samples equally good
    c = evaluate_calibration(samples, n_bins=10, n_resamples=200, seed=0)
    assert (c["spearman"], c["prompts_used"], c["prompts_skipped"]) == (1.0, 1, 1)
    # ECE on prompt a only: confidences 0.9, 0.7, 0.3, 0.1 -> outcomes 1, 1, 0, 0, one per bin:
    # (0.1 + 0.3 + 0.3 + 0.1) / 4 = 0.2
    assert c["ece"] == pytest.approx(0.2) and c["ece_samples"] == 4
    assert c["outcome_rate"] == 0.5 and c["mean_confidence"] == pytest.approx(0.5)
    assert sum(b["count"] for b in c["bins"]) == 4


# --- length buckets ------------------------------------------------------------------------------

def test_bucket_assignment_on_known_lengths():
    assert eval_lib.assign_buckets([1, 10, 11, 20, 21, 100], [10, 20]) == [0, 0, 1, 1, 2, 2]
    assert eval_lib.assign_buckets([3, 4], []) == [0, 0]
    assert eval_lib.bucket_ranges([10, 20]) == [(None, 10), (11, 20), (21, None)]
    assert [eval_lib.bucket_label(*r) for r in eval_lib.bucket_ranges([10, 20])] == \
        ["≤10 words", "11–20 words", ">20 words"]
    with pytest.raises(ValueError, match="strictly increasing"):
        eval_lib.assign_buckets([1], [20, 10])
    assert eval_lib.reference_words(["one two  three", " a "]) == [3, 1]


def test_default_edges_are_dev_tertiles():
    demo = [18, 18, 20, 20, 20, 20, 21, 22, 23, 23, 23, 24, 24, 26, 26, 26, 26, 27, 27, 28, 28, 28, 29, 29, 30,
            30, 31, 34, 36, 36, 36, 44]  # the demo's 32 dev reference lengths
    edges = eval_lib.default_length_edges(demo)
    assert edges == [23, 28]
    counts = np.bincount(eval_lib.assign_buckets(demo, edges))
    assert list(counts) == [11, 11, 10]
    assert eval_lib.default_length_edges([5] * 6) == [5]
    assert eval_lib.default_length_edges([]) == []


# --- the report ----------------------------------------------------------------------------------

def synthetic(n=12, k=4, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"row{i:02d}" for i in range(n)]
    references = pd.DataFrame({"id": ids, "reference": [" ".join(["word"] * int(w)) for w in rng.integers(5, 40, n)],
                               "prompt": [f"SUBREDDIT: r/test\n\nPOST: post number {i} | with a pipe\n\nTL;DR:"
                                          for i in range(n)]})
    frames = []
    for system, level in (("teacher", 0.3), ("sft", 0.15), ("plad", 0.2)):
        scores = np.clip(rng.normal(level, 0.05, (n, 3)), 0, 1)
        texts = [f"{system} summary <b>{i}</b> | end" for i in range(n)]
        frames.append(pd.DataFrame({"system": system, "id": ids, "text": texts,
                                    "output_tokens": rng.integers(5, 40, n), "rouge1": scores[:, 0],
                                    "rouge2": scores[:, 1] / 3, "rougeL": scores[:, 2]}))
    samples = pd.concat([pd.DataFrame({"system": s, "id": np.repeat(ids, k), "sample_index": np.tile(range(k), n),
                                       "text": "x", "logp_mean": rng.uniform(-3, -0.1, n * k),
                                       "rougeL": rng.uniform(0, 0.5, n * k)}) for s in ("sft", "plad")],
                        ignore_index=True)
    log = pd.DataFrame({"step": range(1, 21), "loss": np.linspace(1.0, 0.5, 20),
                        "pair_accuracy": np.linspace(0.4, 0.9, 20), "margin": np.linspace(-0.2, 0.8, 20)})
    judgments = pd.DataFrame([{"id": i, "system": s, "opponent": o, "system_position": pos,
                               "verdict": rng.choice(["A", "B"]), "logp_a": -1.0, "logp_b": -2.0, "raw": ""}
                              for s, o in opponents(["teacher", "sft", "plad"]) for i in ids for pos in "AB"])
    return pd.concat(frames, ignore_index=True), references, samples, log, judgments


SECTIONS = ["Results", "PLaD vs SFT (paired bootstrap)", "By reference length", "Calibration", "Judge win rate",
            "Training curves (calibrate)", "Sample outputs", "Provenance"]
EMBEDDED_JUDGE = {"backend": "hf", "model": "embedded:smollm2-135m-instruct", "prompt": "judge/tldr.txt", "rows": 12}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    generations, references, samples, log, judgments = synthetic()
    metrics = eval_lib.evaluation_metrics(generations, references[["id", "reference"]], samples, [], 200, 0, 10,
                                          judgments)
    metrics["settings"].update(calibration_samples=4, calibration_temperature=0.7, calibration_top_p=0.95,
                               judge=EMBEDDED_JUDGE)
    provenance = {"keys": {"evaluate": "e" * 16, "calibrate": "c" * 16}, "config": {"eval.n_resamples": 200},
                  "report_path": "data/artifacts/evaluate/eeee/report.html"}
    summary = write_report(out, metrics, generations, references, log, provenance, "Synthetic report", 3)
    return out, metrics, summary


def test_metrics_structure_holds_every_block_per_bucket(written):
    _, metrics, _ = written
    assert set(metrics) == {"settings", "systems", "paired", "calibration", "judge", "length_buckets"}
    assert list(metrics["systems"]) == ["teacher", "sft", "plad"] and list(metrics["calibration"]) == ["sft", "plad"]
    buckets = metrics["length_buckets"]["buckets"]
    assert len(buckets) == 3 and sum(b["n"] for b in buckets) == 12
    for b in buckets:
        assert all(b["systems"][s]["n"] == b["n"] for s in ("teacher", "sft", "plad"))
        assert b["paired"]["plad_vs_sft"]["n"] == b["n"]
        assert set(b["calibration"]) == {"sft", "plad"} and "bins" not in b["calibration"]["sft"]
        assert b["judge"]["vs"]["reference"]["teacher"]["n"] == b["n"] == b["judge"]["vs"]["sft"]["plad"]["n"]
    assert len(metrics["calibration"]["sft"]["bins"]) == 10
    json.dumps(metrics, allow_nan=False)  # strict JSON: no NaN anywhere


def test_report_writer_produces_md_and_self_contained_html(written):
    out, metrics, summary = written
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for section in SECTIONS:
        assert f"## {section}" in md
        assert f"<h2>{section}</h2>" in page
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3  # by length, reliability diagram, training curves
    assert all(base64.b64decode(i).startswith(b"\x89PNG\r\n\x1a\n") for i in images)
    for name in ("by_length.png", "reliability.png", "training.png"):
        assert f"](plots/{name})" in md and (out / "plots" / name).read_bytes().startswith(b"\x89PNG")
    assert not re.search(r'(src|href)="(?!data:)', page) and "<script" not in page  # nothing external
    assert md.count("### Example ") == 3 and page.count("<h3>Example ") == 3
    assert "teacher summary &lt;b&gt;" in page and "<b>" not in page  # model text is escaped
    assert "POST: post number" in md and "<b>{i}</b> \\| end" not in md and "</b> \\| end" in md  # pipes escaped
    assert "e" * 16 in md and "eval.n_resamples" in page  # provenance
    teacher = metrics["systems"]["teacher"]
    assert f"{teacher['rougeL']:.2f} [{teacher['rougeL_low']:.2f}, {teacher['rougeL_high']:.2f}]" in md
    assert "paired bootstrap p " in summary and "Full report: data/artifacts/evaluate/eeee/report.html" in summary
    assert "| teacher |" in summary and "ROUGE-L by reference length" in summary and "Spearman" in summary


def test_report_shows_the_win_rate_table_and_says_the_embedded_judge_is_weak(written):
    out, metrics, summary = written
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    vs = metrics["judge"]["vs"]
    assert set(vs) == {"reference", "sft"} and set(vs["reference"]) == {"teacher", "sft", "plad"}
    assert set(vs["sft"]) == {"teacher", "plad"} and vs["reference"]["plad"]["n"] == 12
    plad = vs["reference"]["plad"]
    cell = f"{plad['win_rate']:.1f} [{plad['win_rate_low']:.1f}, {plad['win_rate_high']:.1f}]"
    wtl = f"{plad['wins']} / {plad['ties']} / {plad['losses']}"
    for text in (md, summary):
        assert "win rate vs human reference" in text and "win rate vs SFT" in text  # in the results table
        row = next(line for line in text.splitlines() if line.startswith("| plad |") and wtl in line)
        assert cell in row
        assert "SmolLM2-135M-Instruct: a weak judge" in text
        assert f"position consistency {metrics['judge']['consistency']:.1f}%" in text
    assert "<h2>Judge win rate</h2>" in page and "Win rates per reference-length bucket" in md


def test_report_names_a_disabled_judge(tmp_path):
    generations, references, samples, log, _ = synthetic(n=6)
    metrics = eval_lib.evaluation_metrics(generations, references[["id", "reference"]], samples, [], 100, 0, 10)
    metrics["settings"].update(calibration_samples=4, calibration_temperature=0.7, calibration_top_p=0.95)
    assert metrics["judge"] == {}
    summary = write_report(tmp_path, metrics, generations, references, log, {}, "No judge", 1)
    assert "win rate" not in summary and "eval.judge.enabled = false" in (tmp_path / "report.md").read_text()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install -y chromium)")
def test_report_html_renders_in_headless_chromium(written, tmp_path):
    out, _, _ = written
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400", f"--screenshot={shot}",
                    (out / "report.html").as_uri()], check=True, capture_output=True, timeout=120)
    from matplotlib.image import imread
    pixels = imread(shot)[..., :3]
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    # not blank: many distinct colours (text, tables, plots), and a sizeable share of non-white pixels
    distinct = len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert distinct > 50, distinct
    assert (pixels.min(axis=-1) < 0.9).mean() > 0.02


# --- calibration sampling on a tiny model --------------------------------------------------------

@pytest.mark.slow
def test_calibration_samples_are_scored_by_the_student(tmp_path):
    import torch

    from plad_core import train
    from plad_core.artifacts import Artifact
    from plad_core.config import load_config
    from plad_core.data import load_rows, split_rows
    from plad_core.models import load_model
    from plad_core.stages import _calibration_samples, _prompts
    from tiny import CACHE, TLDR, make_tiny_model

    rows = split_rows(load_rows(str(TLDR)).rows, {"labeled": 2, "unlabeled": 0, "dev": 5}, "plad-v1")
    (tmp_path / "data").mkdir()
    rows.to_parquet(tmp_path / "data" / "rows.parquet", index=False)
    data = Artifact("prepare_data", "k", tmp_path / "data", {"config": {"data.task": "tldr"}})
    cfg = load_config("tldr", [f"cache_dir={CACHE}", "eval.dtype=float32", "eval.max_new_tokens=6",
                               "eval.calibration_samples=3", "eval.calibration_rows=4", "eval.stop=[]"])
    model, tokenizer = load_model(str(make_tiny_model(tmp_path / "student", layers=2)), CACHE)
    dev = rows[rows["split"] == "dev"].reset_index(drop=True)
    samples = _calibration_samples(model, tokenizer, "plad", dev, data, cfg)
    assert len(samples) == 4 * 3 and list(samples["id"].unique()) == list(dev["id"].head(4))
    assert list(samples["sample_index"]) == [0, 1, 2] * 4
    # each sample's log P̄ is the student's own, scored alone (no batch effects in float32)
    prompts, _ = _prompts(dev.head(4), data, cfg.student.prompt, tokenizer)
    row = samples.iloc[7]
    item = train.encode(tokenizer, prompts[list(dev["id"]).index(row["id"])], row["text"], 1000)
    with torch.inference_mode():
        total, count = train.sequence_logprobs(model, train.collate([item], tokenizer.pad_token_id))
    assert row["scored_tokens"] == int(count[0])
    assert row["logp_mean"] == pytest.approx(float(total[0] / count[0]), abs=1e-4)
    assert samples["rougeL"].between(0, 1).all()
