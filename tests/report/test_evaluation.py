"""The evaluate report writer: metrics.json's structure per bucket, report.md and a self-contained report.html
with every section, the judge's win-rate table, and a headless-browser render."""

import base64
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from plad_core.evaluation import metrics as eval_lib
from plad_core.evaluation.judge import opponents
from plad_core.report.evaluation import write_report


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
# make test installs Debian's chromium where apt-get can; in CI (CI=true) a missing browser fails the test.
@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="chromium not installed (Debian: apt-get install -y chromium; make test does it as root)")
def test_report_html_renders_in_headless_chromium(written, tmp_path):
    assert CHROMIUM, "chromium is not installed: make test installs Debian's chromium (apt-get install -y chromium)"
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

