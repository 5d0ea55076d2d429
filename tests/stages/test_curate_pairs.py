"""Pair curation: the repeated word-3-gram share by hand, the drops per reason (first reason wins), the
curate_pairs stage's two Parquet files and manifest, its key, and the SFT student's margin scored here."""

import argparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tiny import make_tiny_model

from flows.cli import cmd_pairs_show
from plad_core import models
from plad_core.artifacts import ArtifactStore
from plad_core.config import load_config
from plad_core.models import MODEL_DIR
from plad_core.pairs import DROPPED_SCHEMA, PAIRS_SCHEMA, curate_pairs
from plad_core.report.blocks import render_markdown
from plad_core.report.curation import curation_blocks
from plad_core.stages.curate import run_curate_pairs
from plad_core.text_stats import repeated_ngram_share
from plad_core.training.batches import encode_pairs

LOOP = "i am not sure i am not sure i am not sure"  # 12 words, 10 3-grams: 4 distinct (i-am-not, am-not-sure,
# not-sure-i, sure-i-am), 6 repeat one seen earlier
CLEAN = "my cat sleeps all day on the sofa"          # 6 3-grams, all distinct


def test_the_repeat_share_counts_word_trigrams_that_repeat_an_earlier_one():
    assert repeated_ngram_share(LOOP) == pytest.approx(6 / 10)
    assert repeated_ngram_share("the cat sat the cat sat") == pytest.approx(1 / 4)  # tcs cst stc tcs
    assert repeated_ngram_share("A a A a a") == pytest.approx(2 / 3)  # lower-cased: aaa x3
    assert repeated_ngram_share(CLEAN) == 0.0 and repeated_ngram_share("two words") == 0.0


def pairs_frame(chosen: list[str], rejected: list[str]) -> pd.DataFrame:
    n = len(chosen)
    return pd.DataFrame({
        "id": [f"p{i}" for i in range(n)], "sample_index": 0, "prompt": [f"POST: post {i}\nTL;DR:" for i in range(n)],
        "chosen": chosen, "rejected": rejected, "reference": None, "teacher_model": "T", "student_model": "S",
        "prompt_tokens": 5, "chosen_tokens": 8, "rejected_tokens": 8, "teacher_temperature": 0.7,
        "teacher_top_p": 0.95, "teacher_seed": 0, "student_temperature": 0.7, "student_top_p": 0.95,
        "student_seed": 1, "chosen_finish_reason": "stop", "rejected_finish_reason": "stop"})


# p0 clean; p1 y_T loops (degenerate); p2 only y_S loops (kept: a looping y_S is a fine "rejected");
# p3 y_T loops and the student agrees (counted once, as degenerate); p4 the student agrees
FRAME = pairs_frame([CLEAN, LOOP, "a short clean summary here", LOOP, "the pay is low but I like it"],
                    ["cat", "not sure", LOOP, "x", "job"])
GAP = pd.Series([0.1, 0.0, -0.2, 2.0, 1.5])


def test_curation_drops_degenerate_teacher_texts_and_optionally_pairs_the_student_already_ranks_right():
    kept, dropped, stats = curate_pairs(FRAME, 0.2)
    assert list(kept["id"]) == ["p0", "p2", "p4"] and list(kept.columns) == list(FRAME.columns)
    assert list(dropped["id"]) == ["p1", "p3"] and set(dropped["reason"]) == {"degenerate"}
    assert stats["built"] == 5 and stats["kept"] == 3 and stats["dropped"] == {"degenerate": 2}
    shares_t, shares_s = [0, .6, 0, .6, 0], [0, 0, .6, 0, 0]  # by hand, see LOOP
    assert stats["repeat_share"]["before"] == pytest.approx({"chosen": np.mean(shares_t), "rejected": np.mean(shares_s)},
                                                           abs=1e-4)
    assert stats["repeat_share"]["after"] == pytest.approx({"chosen": 0.0, "rejected": 0.6 / 3}, abs=1e-4)

    kept, dropped, stats = curate_pairs(FRAME, 0.2, GAP, student_margin=1.0)
    assert list(kept["id"]) == ["p0", "p2"] and stats["dropped"] == {"degenerate": 2, "student_agrees": 1}
    assert dict(zip(dropped["id"], dropped["reason"])) == {"p1": "degenerate", "p3": "degenerate", "p4": "student_agrees"}
    assert list(dropped["student_gap"]) == [0.0, 2.0, 1.5]
    assert list(curate_pairs(FRAME, 1.0)[0]["id"]) == list(FRAME["id"])  # 1.0: nothing is above it
    with pytest.raises(ValueError, match="student_margin is set but no student_gap"):
        curate_pairs(FRAME, 0.2, None, student_margin=1.0)


def committed(store, stage, frame, stats, name="pairs.parquet"):
    def build(out, work):
        if frame is not None:
            pq.write_table(pa.Table.from_pandas(frame, schema=PAIRS_SCHEMA, preserve_index=False), out / name)
        return stats
    return store.materialize(stage, 1, {"test": stage, "rows": 0 if frame is None else len(frame)}, {}, build)


BUILT_STATS = {"truncated": {"policy": "drop"}, "dropped_truncated": 4, "pairs": 5}


@pytest.fixture(scope="module")
def store_with_pairs(tmp_path_factory):
    """A store holding a build_pairs artifact of FRAME and an sft_student artifact of a tiny model."""
    root = tmp_path_factory.mktemp("curate")
    store = ArtifactStore(root / "artifacts")
    built = committed(store, "build_pairs", FRAME, BUILT_STATS)

    def model(out, work):
        make_tiny_model(out / MODEL_DIR, layers=1, hidden=16, seed=8)
        return {}
    sft = store.materialize("sft_student", 1, {"test": "sft"}, {}, model)
    return root, store, built, sft


def test_the_stage_writes_curated_pairs_dropped_pairs_and_counts_and_keys_its_settings(store_with_pairs, capsys):
    root, store, built, sft = store_with_pairs
    cfg = load_config("tldr", [f"artifacts_root={root / 'artifacts'}"])
    curated = run_curate_pairs(cfg, store, built, sft)
    kept = pq.read_table(curated.file("pairs.parquet"))
    dropped = pq.read_table(curated.file("dropped.parquet"))
    assert kept.schema.equals(PAIRS_SCHEMA) and dropped.schema.equals(DROPPED_SCHEMA)
    assert kept.column("id").to_pylist() == ["p0", "p2", "p4"] and dropped.column("reason").to_pylist() == ["degenerate"] * 2
    stats = curated.manifest["stats"]
    assert stats["dropped"] == {"degenerate": 2} and stats["kept"] == stats["rows"] == 3
    assert stats["truncated"] == {"policy": "drop", "dropped_by_build_pairs": 4}  # reported, not counted again
    assert curated.manifest["upstream"] == {"build_pairs": built.key, "sft_student": sft.key}
    # the key holds pairs.curate and nothing of build_pairs' settings
    assert run_curate_pairs(load_config("tldr", [f"artifacts_root={root / 'artifacts'}", "pairs.min_chars=3"]),
                            store, built, sft).key == curated.key
    looser = run_curate_pairs(load_config("tldr", [f"artifacts_root={root / 'artifacts'}",
                                                   "pairs.curate.max_repeat_share=1.0"]), store, built, sft)
    assert looser.key != curated.key and looser.manifest["stats"]["kept"] == 5

    report = render_markdown(curation_blocks({"curation": stats})[0])
    assert "## Pair curation" in report and "| dropped: degenerate | 2 |" in report
    assert "| kept | 3 | 0.0 | 20.0 |" in report and "student_agrees is off" in report
    assert "already dropped 4 pair(s)" in report
    assert curation_blocks({}) == ([], [])

    cmd_pairs_show(argparse.Namespace(path=str(curated.file("dropped.parquet")), n=1, prompt_chars=50, config="tldr"))
    assert "2 pairs" in capsys.readouterr().out.splitlines()[0]


def logp_mean(model, ids, n_prompt) -> float:
    """Mean log-prob of ids[n_prompt:] given what precedes them, float64, from full-vocabulary logits."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].double()
    logp = torch.log_softmax(logits, -1)[n_prompt - 1:]
    return float(logp[torch.arange(len(logp)), torch.tensor(ids[n_prompt:])].mean())


def test_student_agrees_drops_the_pairs_the_sft_student_ranks_right_by_more_than_the_margin(store_with_pairs):
    root, store, built, sft = store_with_pairs
    model, tokenizer = models.load_model(str(sft.file(MODEL_DIR)), root)
    gaps = [logp_mean(model, c.ids, c.n_prompt) - logp_mean(model, r.ids, r.n_prompt)
            for c, r in encode_pairs(FRAME, tokenizer, 512)]
    top = sorted((g for g, i in zip(gaps, FRAME["id"]) if i in ("p0", "p2", "p4")), reverse=True)
    margin = (top[0] + top[1]) / 2  # midway: only the pair the student ranks right by the most is above it
    assert margin > 0 and top[0] - top[1] > 1e-3  # seed 8's gaps; far apart beside float32 rounding
    cfg = load_config("tldr", [f"artifacts_root={root / 'artifacts'}", f"pairs.curate.student_margin={margin}",
                               "train.optim.bf16=false"])
    curated = run_curate_pairs(cfg, store, built, sft)
    dropped = pd.read_parquet(curated.file("dropped.parquet"))
    agrees = dropped[dropped["reason"] == "student_agrees"]
    expected = [i for g, i in zip(gaps, FRAME["id"]) if i in ("p0", "p2", "p4") and g > margin]
    assert list(agrees["id"]) == expected and len(expected) == 1
    by_id = dict(zip(FRAME["id"], gaps))
    assert list(dropped["student_gap"]) == pytest.approx([by_id[i] for i in dropped["id"]], abs=1e-4)
    assert curated.manifest["stats"]["dropped"] == {"degenerate": 2, "student_agrees": 1}
    assert curated.manifest["config"]["train.optim.max_seq_len"] == cfg.train.optim.max_seq_len
