"""From a judge's verdicts (``plad_core.evaluation.judge.JUDGMENT_COLUMNS``, both orders of every pair)
to each pair's score, the win rates with their CIs, the judge's position diagnostics and its validity
on known-answer cases (``plad_core.evaluation.judge_validity``).

A pair's score (1 win, 0.5 tie, 0 loss for the system) is position-debiased in one of two ways:

* Log-odds (the hf judge, which gives log P("A") and log P("B") for every verdict): in each order,
  the log-odds of the system's letter over the opponent's, logp(system's letter) − logp(opponent's
  letter); the pair's d is the sum over the two orders. A judge with a pure position bias adds the
  same constant to "A" in both orders, once for the system and once against it, so it cancels in d.
  Win if d > 0, loss if d < 0, tie if d = 0. This sum is plad's own rule; the order swap it builds
  on is Zheng et al. (2023, "Judging LLM-as-a-judge", Sec. 3.4).
* Both verdicts (a text judge, whose log-probs are NaN, or any pair with an unreadable verdict):
  a win when both orders' verdicts name the system, a loss when both name the opponent, a tie
  otherwise (Zheng et al.'s conservative rule).

Validity rows (opponent ``VALIDITY``) hold cases whose answer is known, the known-better candidate
in the ``system`` place: their mean score is the judge's agreement with the known answer (ties
half; 50 is chance), kept apart from the win rates.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd

from plad_core.stats import bootstrap_ci

VALIDITY = "validity"   # the opponent of the known-answer cases
KNOWN = "known answer"  # their system: the candidate known to be better
OUTCOME_COLUMNS = ["system", "opponent", "id", "score", "consistent", "log_odds"]


def _system_log_odds(j: pd.DataFrame) -> pd.Series:
    """Per judgment: log P(the system's letter) − log P(the opponent's letter) (NaN without log-probs)."""
    a, b = j["logp_a"].astype(float), j["logp_b"].astype(float)
    return pd.Series(np.where(j["system_position"] == "A", a - b, b - a), index=j.index)


def pair_outcomes(judgments: pd.DataFrame) -> pd.DataFrame:
    """One row per (system, opponent, id): ``score`` 1 (win), 0.5 (tie) or 0 (loss), from the summed
    log-odds when both verdicts have them and are readable, else from the two verdicts (see the module
    docstring); ``consistent`` (both verdicts readable and naming the same candidate); ``log_odds``,
    the summed d (NaN without log-probs)."""
    j = judgments.assign(picked=np.where(judgments["verdict"].isna(), "none",
                                         np.where(judgments["verdict"] == judgments["system_position"],
                                                  "system", "opponent")),
                         d=_system_log_odds(judgments))
    rows = []
    for (system, opponent, row_id), group in j.groupby(["system", "opponent", "id"], sort=True):
        picks, d = list(group["picked"]), group["d"].to_numpy(float)
        if len(picks) != 2:
            raise ValueError(f"judgments for ({system}, {opponent}, {row_id}): expected both orders, got {len(picks)}")
        log_odds = float(d.sum()) if np.isfinite(d).all() else float("nan")
        if np.isfinite(log_odds) and "none" not in picks:
            score = 1.0 if log_odds > 0 else 0.0 if log_odds < 0 else 0.5
        else:
            score = 1.0 if picks == ["system"] * 2 else 0.0 if picks == ["opponent"] * 2 else 0.5
        rows.append({"system": system, "opponent": opponent, "id": row_id, "score": score,
                     "consistent": picks[0] == picks[1] != "none", "log_odds": log_odds})
    return pd.DataFrame(rows, columns=OUTCOME_COLUMNS)


def _counts(group: pd.DataFrame) -> dict[str, int]:
    return {"wins": int((group["score"] == 1).sum()), "ties": int((group["score"] == 0.5).sum()),
            "losses": int((group["score"] == 0).sum()), "n": len(group)}


def validity_summary(judgments: pd.DataFrame, n_resamples: int = 1000, seed: int = 0) -> Optional[dict[str, Any]]:
    """The judge's agreement (x100) with the known answers of the validity rows, ties counted half,
    with its 95% bootstrap CI over cases; ``valid`` when the CI's low end is above 50 (chance).
    ``agree`` / ``ties`` / ``disagree`` count the cases; None without validity rows."""
    cases = pair_outcomes(judgments[judgments["opponent"] == VALIDITY])
    if cases.empty:
        return None
    ci = bootstrap_ci(list(cases["score"]), n_resamples, seed)
    counts = _counts(cases)
    return {"agreement": round(100 * ci.estimate, 2), "agreement_low": round(100 * ci.low, 2),
            "agreement_high": round(100 * ci.high, 2), "n": counts["n"], "agree": counts["wins"],
            "ties": counts["ties"], "disagree": counts["losses"],
            "consistency": round(100 * float(cases["consistent"].mean()), 2), "valid": bool(round(100 * ci.low, 2) > 50)}


def win_rates(judgments: pd.DataFrame, n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Win rates (x100) with bootstrap CIs per opponent and system, the judge's diagnostics and its validity.

    Returns:
        {"vs": {opponent: {system: {win_rate, win_rate_low, win_rate_high, wins, ties, losses, n,
        consistency}}}, "consistency": share of pairs (x100) whose two verdicts agree,
        "a_rate": share of readable verdicts that chose A (x100; 50 for a judge without position
        bias), "unreadable": verdicts that named neither, "judgments": their count, "validity":
        ``validity_summary`` of the validity rows (None without them)}. Everything but "validity"
        is computed on the systems' judgments only.
    """
    systems = judgments[judgments["opponent"] != VALIDITY]
    outcomes = pair_outcomes(systems)
    vs: dict[str, dict[str, Any]] = {}
    for (opponent, system), group in outcomes.groupby(["opponent", "system"], sort=False):
        ci = bootstrap_ci(list(group["score"]), n_resamples, seed)
        vs.setdefault(opponent, {})[system] = {
            "win_rate": round(100 * ci.estimate, 2), "win_rate_low": round(100 * ci.low, 2),
            "win_rate_high": round(100 * ci.high, 2), **_counts(group),
            "consistency": round(100 * float(group["consistent"].mean()), 2)}
    readable = systems["verdict"].dropna()
    return {"vs": vs,
            "consistency": round(100 * float(outcomes["consistent"].mean()), 2) if len(outcomes) else None,
            "a_rate": round(100 * float((readable == "A").mean()), 2) if len(readable) else None,
            "unreadable": int(systems["verdict"].isna().sum()), "judgments": len(systems),
            "validity": validity_summary(judgments, n_resamples, seed)}
