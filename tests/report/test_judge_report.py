"""What the evaluation report and results.md say about the judge's validity (evidence or not, with the
agreement's CI, above every table of win rates) and about power (n and the smallest resolvable difference)."""

import numpy as np
import pandas as pd
import pytest

from plad_core.evaluation import metrics as eval_lib
from plad_core.evaluation.judge import opponents
from plad_core.evaluation.judge_scores import KNOWN, VALIDITY
from plad_core.report.evaluation import write_report
from plad_core.stats import min_detectable_difference

N = 32
IDS = [f"row{i:02d}" for i in range(N)]
SETTINGS = {"backend": "hf", "model": "some/judge", "prompt": "judge/tldr.txt", "rows": N, "task": "tldr"}


def frames(known_margin, seed=0):
    """Three systems' ROUGE on N rows, random judgments with log-probs, and N validity cases whose known
    answer has log-odds ``known_margin`` + noise in order 1 (0 in order 2)."""
    rng = np.random.default_rng(seed)
    generations = pd.concat([pd.DataFrame({
        "system": s, "id": IDS, "text": f"{s} text", "output_tokens": rng.integers(5, 40, N),
        "rouge1": rng.uniform(0, 0.4, N), "rouge2": rng.uniform(0, 0.1, N),
        "rougeL": np.clip(rng.normal(level, 0.08, N), 0, 1)}) for s, level in (("teacher", 0.3), ("sft", 0.12),
                                                                              ("plad", 0.13))], ignore_index=True)
    references = pd.DataFrame({"id": IDS, "reference": ["a reference of some words"] * N})
    rows = [{"id": i, "system": s, "opponent": o, "system_position": pos, "verdict": "A",
             "logp_a": -0.5, "logp_b": float(rng.uniform(-2, -0.1)), "raw": ""}
            for s, o in opponents(["teacher", "sft", "plad"]) for i in IDS for pos in "AB"]
    for i in IDS:
        d = known_margin + float(rng.normal(0, 1))
        rows += [{"id": i, "system": KNOWN, "opponent": VALIDITY, "system_position": "A", "verdict": "A" if d >= 0
                  else "B", "logp_a": d, "logp_b": 0.0, "raw": ""},
                 {"id": i, "system": KNOWN, "opponent": VALIDITY, "system_position": "B", "verdict": "A",
                  "logp_a": -1.0, "logp_b": -1.0, "raw": ""}]
    samples = pd.DataFrame(columns=["system", "id", "sample_index", "text", "logp_mean", "rougeL"])
    return generations, references, samples, pd.DataFrame(rows)


def written(tmp_path, known_margin):
    generations, references, samples, judgments = frames(known_margin)
    metrics = eval_lib.evaluation_metrics(generations, references, samples, [], 200, 0, 10, judgments)
    metrics["settings"].update(calibration_samples=0, calibration_temperature=0.7, calibration_top_p=0.95,
                               judge=SETTINGS)
    summary = write_report(tmp_path, metrics, generations, references.assign(prompt="p"), None, {}, "Judge test", 0)
    return metrics, summary, (tmp_path / "report.md").read_text(), generations


def test_a_judge_at_chance_is_called_no_evidence_above_every_win_rate_table(tmp_path):
    metrics, summary, md, _ = written(tmp_path, known_margin=0.0)
    v = metrics["judge"]["validity"]
    assert v["n"] == N and not v["valid"] and v["agreement_low"] <= 50
    sentence = (f"the judge's validity check ({v['agreement']:.1f}% [{v['agreement_low']:.1f}, "
                f"{v['agreement_high']:.1f}] on {N} known-answer cases) does not exclude chance: the win rates below "
                "are not evidence. Its cases: a post's own reference against another post's")
    for text in (summary, md):
        assert text.lower().count(sentence.lower()) == 2  # above the results table and in the judge section
        for table_head in ("| system | ROUGE-1", "| system | vs human reference"):
            assert text.lower().index(sentence.lower()) < text.index(table_head)


def test_a_valid_judge_states_its_agreement_and_ci(tmp_path):
    metrics, summary, md, _ = written(tmp_path, known_margin=3.0)
    v = metrics["judge"]["validity"]
    assert v["valid"] and v["agreement_low"] > 50
    assert f"agrees with the known answer in {v['agreement']:.1f}% [{v['agreement_low']:.1f}, " in summary
    assert "not evidence" not in summary and "not evidence" not in md
    assert "summed (a pure position bias cancels)" in md


def test_the_paired_comparison_states_n_and_its_minimum_detectable_difference(tmp_path):
    metrics, summary, md, generations = written(tmp_path, known_margin=3.0)
    plad, sft = (generations[generations["system"] == s].sort_values("id")["rougeL"].to_numpy() for s in ("plad", "sft"))
    mde = 100 * min_detectable_difference(plad - sft)
    paired = metrics["paired"]["plad_vs_sft"]
    assert paired["mde"] == pytest.approx(round(mde, 2)) and paired["n"] == N and mde > 1
    sentence = (f"n = {N} dev rows: with this spread, a difference smaller than ±{paired['mde']:.2f} ROUGE-L cannot "
                f"be resolved (80% power, α = 0.05); {N} rows cannot show a 1-point effect")
    assert sentence in summary and sentence in md
    assert f"| ±{paired['mde']:.2f} |" in md  # the paired table's MDE column
