"""The table report's paired differences state n and the MDE, its discussion says what the weakest
comparison cannot resolve, and its win rates follow the judge's validity sentence."""

from types import SimpleNamespace

import numpy as np
import pandas as pd

from plad_core.evaluation.metrics import paired_comparison, system_summary
from plad_core.report.table import headline_table, judge_validity_blocks
from plad_core.report.table_discussion import _against_baselines, standing
from plad_core.stats import min_detectable_difference

N = 32


def scores(level, rng):
    return pd.DataFrame({"id": [f"r{i:02d}" for i in range(N)], "rougeL": np.clip(rng.normal(level, 0.08, N), 0, 1),
                         "rouge1": 0.2, "rouge2": 0.05, "output_tokens": 20})


def result(judge=None):
    rng = np.random.default_rng(3)
    sft, plad, seqkd = scores(0.12, rng), scores(0.13, rng), scores(0.125, rng)

    def row(frame, kind, vs_sft):
        return SimpleNamespace(metrics=system_summary(frame, 200, 0), judge={}, vs_sft=vs_sft, kind=kind,
                               loss="ranking" if kind == "trained" else None, vs_sft_by_metric={}, looping_outputs=None)

    systems = {"sft": row(sft, "sft", None), "PLaD": row(plad, "trained", paired_comparison(plad, sft, n_resamples=200)),
               "SeqKD": row(seqkd, "trained", paired_comparison(seqkd, sft, n_resamples=200))}
    comparisons = [{"a": "PLaD", "b": "SeqKD", **paired_comparison(plad, seqkd, n_resamples=200)}]
    settings = SimpleNamespace(n_resamples=200, judge=SimpleNamespace(task="tldr") if judge else None)
    frames = {"sft": sft, "PLaD": plad, "SeqKD": seqkd}
    return SimpleNamespace(settings=settings, systems=systems, comparisons=comparisons, judge=judge), frames


def test_every_paired_difference_of_the_table_states_n_and_its_mde():
    res, frames = result()
    mde = 100 * min_detectable_difference(frames["PLaD"]["rougeL"].to_numpy() - frames["sft"]["rougeL"].to_numpy())
    table = headline_table(res)
    plad_row = table.rows[list(res.systems).index("PLaD")]
    assert f"n = {N}, MDE ±{round(mde, 2):.2f}" in plad_row and table.rows[0][5] == "–"
    text = " ".join(_against_baselines(res))
    weakest = max([res.systems["PLaD"].vs_sft, res.systems["SeqKD"].vs_sft, res.comparisons[0]], key=lambda c: c["mde"])
    assert text.count(f"n = {N}, MDE ±") == 3
    assert (f"Power: n = {N} dev rows: with this spread, a difference smaller than ±{weakest['mde']:.2f} ROUGE-L "
            f"cannot be resolved (80% power, α = 0.05); {N} rows cannot show a 1-point effect") in text


def test_the_table_puts_the_judges_validity_before_its_win_rates():
    assert judge_validity_blocks(result()[0]) == []  # no judge, no sentence
    invalid = {"validity": {"agreement": 41.3, "agreement_low": 34.0, "agreement_high": 49.3, "n": 150,
                            "valid": False}}
    (para,) = judge_validity_blocks(result(invalid)[0])
    assert para.text.startswith("The judge's validity check (41.3% [34.0, 49.3] on 150 known-answer cases) does "
                                "not exclude chance: the win rates below are not evidence.")


def test_a_rouge_l_gain_with_a_rouge_2_loss_is_called_mixed_not_better():
    rng = np.random.default_rng(5)
    ids = [f"r{i:02d}" for i in range(200)]

    def frame(rouge_l, rouge_2):
        return pd.DataFrame({"id": ids, "rougeL": np.clip(rng.normal(rouge_l, 0.05, 200), 0, 1), "rouge1": 0.3,
                             "rouge2": np.clip(rng.normal(rouge_2, 0.02, 200), 0, 1), "output_tokens": 20})

    sft, plad, seqkd = frame(0.12, 0.06), frame(0.16, 0.03), frame(0.12, 0.06)  # PLaD: +4 ROUGE-L, −3 ROUGE-2

    def row(a, kind):
        compared = {m: paired_comparison(a, sft, m, n_resamples=200) for m in ("rouge1", "rouge2")}
        return SimpleNamespace(metrics=system_summary(a, 200, 0), judge={}, kind=kind, loss="ranking",
                               vs_sft=paired_comparison(a, sft, n_resamples=200) if kind == "trained" else None,
                               vs_sft_by_metric=compared if kind == "trained" else {})

    comparison = {"a": "PLaD", "b": "SeqKD", **paired_comparison(plad, seqkd, n_resamples=200),
                  "by_metric": {m: paired_comparison(plad, seqkd, m, n_resamples=200) for m in ("rouge1", "rouge2")}}
    res = SimpleNamespace(settings=SimpleNamespace(n_resamples=200, judge=None), judge=None, comparisons=[comparison],
                          systems={"sft": row(sft, "sft"), "PLaD": row(plad, "trained"), "SeqKD": row(seqkd, "trained")})
    text = " ".join(_against_baselines(res))
    assert "PLaD beats every baseline on ROUGE-L, but is worse on ROUGE-1 or ROUGE-2 in 1 of 1 pairings" in text
    assert "PLaD ROUGE-1 +0.00 [+0.00, +0.00], p 1.000; ROUGE-2 -" in text
    assert "mixed: better on ROUGE-L but worse on ROUGE-2, so not a better student by ROUGE" in text
    assert "SeqKD ROUGE-1 +0.00 [+0.00, +0.00], p 1.000; ROUGE-2" in text
    assert standing({"rougeL": None, "rouge1": {"low": -1, "high": 1}}) == "no detectable difference on any ROUGE variant"
    assert standing({"rougeL": {"low": 0.1, "high": 1}, "rouge2": {"low": -1, "high": 1}}) == (
        "better on ROUGE-L, no detectable difference on the others")
