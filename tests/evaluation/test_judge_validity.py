"""Position-debiased pair scores (the two orders' log-odds summed for a judge with log-probs, both verdicts
for a text judge) computed by hand, and the judge's validity check: its known-answer cases (a seeded
derangement of TL;DR references, HH chosen vs rejected), judged by scripted judges whose right answer is known."""

import math

import numpy as np
import pandas as pd
import pytest

from plad_core.data import load_rows, rows_schema
from plad_core.evaluation.judge import (
    JUDGMENT_COLUMNS,
    JudgePrompt,
    judge_requests,
    system_requests,
)
from plad_core.evaluation.judge_api import Verdict
from plad_core.evaluation.judge_scores import (
    KNOWN,
    VALIDITY,
    pair_outcomes,
    validity_summary,
    win_rates,
)
from plad_core.evaluation.judge_validity import (
    derangement,
    validity_cases,
    validity_requests,
)
from plad_core.stats import bootstrap_ci
from tests.tiny import HH

PROMPT = JudgePrompt("scripted", "{id}|", "{output_a}|{output_b}")


def judgment(row, position, verdict, logp_a, logp_b, system="plad", opponent="reference"):
    return {"id": row, "system": system, "opponent": opponent, "system_position": position, "verdict": verdict,
            "logp_a": logp_a, "logp_b": logp_b, "raw": ""}


def test_summed_log_odds_cancel_a_pure_position_bias_by_hand():
    bias, s, o = 3.0, -1.2, -1.5  # log-score of the system's and the opponent's text, plus bias toward "A"
    rows = [judgment("r1", "A", "A", s + bias, o), judgment("r1", "B", "A", o + bias, s),  # both verdicts "A"
            judgment("r2", "A", "A", -0.7 + bias, -0.7), judgment("r2", "B", "A", -0.7 + bias, -0.7),  # equal texts
            judgment("r3", "A", "B", o + 0.1, s + 0.1), judgment("r3", "B", "A", s + 0.5, o + 0.5)]
    out = pair_outcomes(pd.DataFrame(rows, columns=JUDGMENT_COLUMNS)).set_index("id")
    # r1: order 1 d = (s + bias) − o, order 2 d = s − (o + bias); the sum 2(s − o) > 0: a win from two "A"s
    assert out.at["r1", "log_odds"] == pytest.approx(2 * (s - o)) and out.at["r1", "score"] == 1.0
    assert not out.at["r1", "consistent"]  # the verdicts alone named A twice: a tie under the old rule
    assert out.at["r2", "log_odds"] == 0.0 and out.at["r2", "score"] == 0.5
    # r3: order 1 (system at A) d = (o + .1) − (s + .1) = o − s; order 2 d = (o + .5) − (s + .5) = o − s
    assert out.at["r3", "log_odds"] == pytest.approx(2 * (o - s)) and out.at["r3", "score"] == 0.0
    assert out.at["r3", "consistent"]


def test_without_log_probs_or_with_an_unreadable_verdict_both_verdicts_decide():
    nan = math.nan
    rows = [judgment("t1", "A", "A", nan, nan), judgment("t1", "B", "B", nan, nan),        # system twice: win
            judgment("t2", "A", "A", nan, nan), judgment("t2", "B", "A", nan, nan),        # position: tie
            judgment("t3", "A", "B", nan, nan), judgment("t3", "B", "A", nan, nan),        # opponent twice: loss
            judgment("t4", "A", None, nan, nan), judgment("t4", "B", "B", nan, nan),       # unreadable: tie
            judgment("t5", "A", None, -0.1, -5.0), judgment("t5", "B", "B", -5.0, -0.1)]  # unreadable with logps: tie
    out = pair_outcomes(pd.DataFrame(rows, columns=JUDGMENT_COLUMNS)).set_index("id")
    assert list(out["score"]) == [1.0, 0.5, 0.0, 0.5, 0.5]
    assert out["log_odds"].iloc[:4].isna().all()


class ContentJudge:
    """log P("A") and log P("B") from the candidates: 0 for the text "reference:<row of the prefix>"
    (or "chosen:..."), −2 otherwise, plus ``bias`` on "A". ``blind`` judges ignore the text."""

    def __init__(self, bias, blind=False):
        self.bias, self.blind = bias, blind

    def verdicts(self, requests, progress=None):
        out = []
        for prefix, suffix in requests:
            row = prefix.rstrip("|")
            score = [0.0 if not self.blind and t in (f"reference:{row}", f"chosen:{row}") else -2.0
                     for t in suffix.split("|")]
            a, b = score[0] + self.bias, score[1]
            out.append(Verdict("A" if a >= b else "B", a, b))
        return out


ROWS = [f"r{i}" for i in range(12)]
DEV = pd.DataFrame({"id": ROWS, "reference": [f"reference:{r}" for r in ROWS]})


def test_derangement_is_a_seeded_permutation_without_fixed_points():
    for n in (2, 3, 7, 50):
        d = derangement(n, seed=4)
        assert sorted(d) == list(range(n)) and all(d[i] != i for i in range(n))
        assert derangement(n, seed=4) == d
    assert derangement(2, 0) == [1, 0] and derangement(50, 1) != derangement(50, 2)
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, 0)


def test_tldr_cases_pit_each_posts_reference_against_another_posts():
    cases = validity_cases(DEV, ROWS, "tldr", seed=3)
    assert list(cases["id"]) == ROWS and list(cases["known"]) == list(DEV["reference"])
    assert all(o != i for i, o in zip(cases["id"], cases["other_source"]))
    assert list(cases["other"]) == [f"reference:{o}" for o in cases["other_source"]]
    assert sorted(cases["other_source"]) == sorted(ROWS)  # every reference is a decoy once
    assert len(validity_cases(DEV, ROWS, "tldr", seed=3, rows=5)) == 5
    assert validity_cases(DEV, ROWS[:1], "tldr", seed=3).empty  # one row has no other post


def test_hh_cases_are_chosen_against_rejected_and_rows_without_one_get_another_dialogues_reply():
    dev = pd.DataFrame({"id": ["h1", "h2", "h3", "h4"], "reference": ["chosen:h1", "chosen:h2", "chosen:h3", "same"],
                        "rejected": ["bad 1", None, "", "same"]})
    cases = validity_cases(dev, ["h1", "h2", "h3", "h4"], "hh", seed=0)
    by_id = {c.id: c for c in cases.itertuples(index=False)}
    assert (by_id["h1"].other, by_id["h1"].other_source) == ("bad 1", "rejected")
    # h4's human "rejected" equals its chosen reply: it falls back to another dialogue's reply, never its own
    for row_id in ("h2", "h3", "h4"):
        c = by_id[row_id]
        assert c.other_source in {"h1", "h2", "h3", "h4"} - {row_id}
        assert c.other == dev.set_index("id").at[c.other_source, "reference"] and c.known != c.other
    assert validity_cases(dev.drop(columns="rejected"), ["h1"], "hh", 0).empty  # one row, nothing to swap in
    assert set(validity_cases(dev.drop(columns="rejected"), ["h1", "h2"], "hh", 0)["other_source"]) == {"h1", "h2"}


def test_prepared_hh_rows_keep_the_rejected_reply_and_tldr_rows_are_unchanged():
    rows = load_rows(str(HH), task="hh").rows
    raw = pd.read_json(HH, lines=True).set_index("id")
    assert all(r["rejected"] == raw.at[r["id"], "rejected"].strip() for r in rows[:50])
    assert rows_schema("hh").names == ["id", "prompt", "chosen", "reference", "rejected", "split"]
    assert rows_schema("hh").field("rejected").nullable
    assert rows_schema("tldr").names == ["id", "subreddit", "title", "post", "summary", "reference", "split"]


def _judged(judge):
    generations = pd.DataFrame([{"system": s, "id": r, "text": f"{s}:{r}"} for s in ("sft", "plad") for r in ROWS])
    prefixes = {r: f"{r}|" for r in ROWS}
    cases = validity_cases(DEV, ROWS, "tldr", seed=0)
    requests = system_requests(PROMPT, prefixes, dict(zip(DEV["id"], DEV["reference"])), generations)
    return judge_requests(judge, requests + validity_requests(PROMPT, prefixes, cases)), len(requests)


def test_a_content_judge_with_a_strong_a_bias_is_valid_and_a_blind_one_is_not():
    judgments, n_system = _judged(ContentJudge(bias=5.0))
    assert (judgments["verdict"] == "A").all()  # the verdicts alone say nothing
    validity = judgments[judgments["opponent"] == VALIDITY]
    assert len(validity) == 2 * len(ROWS) and set(validity["system"]) == {KNOWN}
    w = win_rates(judgments, 1000, 0)
    assert w["judgments"] == n_system and w["a_rate"] == 100.0  # diagnostics on the systems' verdicts only
    assert VALIDITY not in w["vs"] and w["vs"]["reference"]["plad"]["win_rate"] == 0.0  # the reference is known better
    v = w["validity"]
    assert (v["agreement"], v["agreement_low"], v["agreement_high"], v["n"]) == (100.0, 100.0, 100.0, len(ROWS))
    assert v["valid"] and (v["agree"], v["ties"], v["disagree"]) == (len(ROWS), 0, 0)
    blind = win_rates(_judged(ContentJudge(bias=5.0, blind=True))[0], 1000, 0)["validity"]
    assert (blind["agreement"], blind["ties"], blind["valid"]) == (50.0, len(ROWS), False)


def test_validity_summary_by_hand():
    scores = [1.0, 1.0, 0.0, 0.5, 1.0, 0.0, 1.0, 1.0]
    rows = []
    for i, score in enumerate(scores):
        d = {1.0: 1.0, 0.5: 0.0, 0.0: -1.0}[score]  # the known answer's log-odds in order 1; order 2 adds 0
        rows += [judgment(f"v{i}", "A", "A" if d >= 0 else "B", d, 0.0, KNOWN, VALIDITY),
                 judgment(f"v{i}", "B", "A", 0.0, 0.0, KNOWN, VALIDITY)]
    v = validity_summary(pd.DataFrame(rows, columns=JUDGMENT_COLUMNS), 1000, 0)
    ci = bootstrap_ci(scores, 1000, 0)
    assert v["agreement"] == round(100 * float(np.mean(scores)), 2) == 68.75
    assert (v["agreement_low"], v["agreement_high"]) == (round(100 * ci.low, 2), round(100 * ci.high, 2))
    assert (v["agree"], v["ties"], v["disagree"], v["n"]) == (5, 1, 2, 8)
    assert v["valid"] == (round(100 * ci.low, 2) > 50)
    assert validity_summary(pd.DataFrame(rows[:0], columns=JUDGMENT_COLUMNS)) is None
