"""The evaluate report's judge section: how the judge decides, whether its validity check on known answers
excludes chance (``validity_para``, also above every table of win rates), its position consistency (and
whether it is the weak embedded one), win rates against each opponent, and per reference-length bucket."""

from __future__ import annotations

from typing import Any, Optional

from plad_core.report.blocks import Block, Heading, Para, Sections, Table
from plad_core.report.text import OPPONENT_LABELS, ci_text, num_text


def _wtl(w: Optional[dict[str, Any]]) -> str:
    return "–" if not w else f"{w['wins']} / {w['ties']} / {w['losses']}"


def _judge_method(settings: dict[str, Any]) -> Para:
    hf = settings["backend"] == "hf"
    verdict = ("its next-token log-probability of \"A\" vs \"B\" after the prompt" if hf
               else "a standalone A or B parsed from its greedy answer")
    rule = ("the pair's score is the sign of the two orders' log-odds of the system's letter over the "
            "opponent's, summed (a pure position bias cancels): a win above 0, a loss below, a tie at 0"
            if hf else "a win when the judge prefers the system in both orders, a loss when it prefers the "
            "opponent in both, a tie otherwise")
    return Para(
        f"Judge: {settings['model']} ({settings['backend']}; verdict: {verdict}), prompt conf/{settings['prompt']}, "
        f"{settings['rows']} dev rows. Each system's output is compared with the human reference and with the SFT "
        f"student's output, twice with the positions swapped; {rule}. Win rate = (wins + ½·ties) / n (x100), with "
        f"95% bootstrap CIs over rows; W / T / L counts wins, ties and losses.")


CASES = {"tldr": "a post's own reference against another post's", "hh": "the human chosen reply against the rejected one"}


def validity_text(validity: Optional[dict[str, Any]], task: Optional[str] = None) -> str:
    """What the judge's validity check (``judge_scores.validity_summary``) says about its win rates."""
    cases = f" Its cases: {CASES[task]}, each judged in both orders." if task in CASES else ""
    if not validity:
        return ("The judge's validity check had no known-answer cases: nothing shows that this judge tells "
                f"better from worse, so the win rates below are not evidence.{cases}")
    v = validity
    measured = (f"{num_text(v['agreement'], 1)}% [{num_text(v['agreement_low'], 1)}, "
                f"{num_text(v['agreement_high'], 1)}] on {v['n']} known-answer cases")
    if not v["valid"]:
        return (f"The judge's validity check ({measured}) does not exclude chance: the win rates below are not "
                f"evidence.{cases}")
    return (f"The judge's validity check: it agrees with the known answer in {measured} (ties counted half); "
            f"the 95% CI excludes chance (50%).{cases}")


def validity_para(judge: dict[str, Any], settings: Optional[dict[str, Any]]) -> Para:
    return Para(validity_text(judge.get("validity"), (settings or {}).get("task")))


def _judge_caveat(judge: dict[str, Any], settings: dict[str, Any]) -> Para:
    diagnostics = (f"position consistency {num_text(judge['consistency'], 1)}% (pairs whose two verdicts name "
                   f"the same candidate), position A chosen in {num_text(judge['a_rate'], 1)}% of readable verdicts, "
                   f"{judge['unreadable']} of {judge['judgments']} verdicts unreadable")
    if str(settings["model"]).startswith("embedded:"):
        return Para(
            f"This judge is the embedded teacher, SmolLM2-135M-Instruct: a weak judge. A 135M-parameter model is far "
            f"too small to judge summaries reliably, and these win rates are not evidence of quality: {diagnostics}. "
            "Ties from inconsistent verdicts pull every win rate toward 50. Set eval.judge.model to a stronger "
            "local model, or eval.judge.backend=openai with eval.judge.api, for a judge worth reading.")
    return Para(f"Judge diagnostics: {diagnostics}.")


def _judge_table(vs: dict[str, Any], opponents: list[str], systems: list[str]) -> Table:
    header = ["system"]
    for o in opponents:
        header += [f"vs {OPPONENT_LABELS[o]} [95% CI]", "W / T / L", "consistent %"]
    rows = []
    for s in systems:
        row = [s]
        for o in opponents:
            w = vs[o].get(s)
            row += [ci_text(w, "win_rate", 1), _wtl(w), num_text(w["consistency"], 1) if w else "–"]
        rows.append(row)
    return Table(header, rows)


def judge_blocks(metrics: dict[str, Any]) -> Sections:
    """(report blocks, summary blocks) of the judge's win rates and its position consistency."""
    judge, settings = metrics.get("judge"), metrics["settings"].get("judge")
    if not judge or not settings:
        note = [Para("Not computed (eval.judge.enabled = false).")]
        return [Heading("Judge win rate"), *note], []
    caveat = _judge_caveat(judge, settings)
    vs = judge["vs"]
    opponents = [o for o in OPPONENT_LABELS if o in vs]
    systems = list(metrics["systems"])
    table = _judge_table(vs, opponents, systems)
    buckets = [[b["name"], s, *[ci_text(b["judge"]["vs"].get(o, {}).get(s), "win_rate", 1) for o in opponents]]
               for b in metrics["length_buckets"]["buckets"] if b.get("judge") for s in systems]
    validity = validity_para(judge, settings)
    report: list[Block] = [Heading("Judge win rate"), validity, _judge_method(settings), caveat, table]
    if buckets:
        report += [Para("Win rates per reference-length bucket:"),
                   Table(["bucket", "system", *[f"vs {OPPONENT_LABELS[o]}" for o in opponents]], buckets,
                         ["l", "l", *["r"] * len(opponents)])]
    return report, [Para("Judge win rates (x100):"), validity, table, caveat]
