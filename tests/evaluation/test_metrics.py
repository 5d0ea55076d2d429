"""ROUGE, per-system summaries with CIs, the paired test and length buckets against hand-computed values."""

import numpy as np
import pandas as pd
import pytest
from rouge_score import rouge_scorer

from plad_core.evaluation import metrics as eval_lib
from plad_core.rouge import rouge_f1

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
    ours = rouge_f1(predictions, references, use_stemmer=True)
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

