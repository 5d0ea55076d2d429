"""The evaluation report: ``report.md`` and a self-contained ``report.html`` in the evaluate artifact.

Both are rendered from one list of blocks (headings, paragraphs, tables, images, preformatted
text), so they always say the same thing. Plots are drawn with matplotlib's Agg canvas (no display,
no global pyplot state); report.md links them as ``plots/*.png`` beside it, report.html embeds the
same PNG bytes as base64 data URIs and needs nothing else to open.

``write_report`` also returns the summary markdown: the results table with CIs, the paired test,
the calibration, per-bucket ROUGE-L and the judge's win rates. The stage writes it as ``results.md``, which the
flow publishes as its Prefect markdown artifact and ``plad run`` prints.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import pandas as pd

SYSTEM_LABELS = {"teacher": "Teacher", "sft": "SFT", "plad": "PLaD"}
COLORS = {"teacher": "#4c72b0", "sft": "#dd8452", "plad": "#55a868"}
PROMPT_TAIL_CHARS = 400


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    align: Optional[list[str]] = None  # "l" or "r" per column; default: first left, rest right


@dataclass
class Image:
    name: str  # file name under plots/
    png: bytes
    alt: str


@dataclass
class Pre:
    text: str


Block = Union[Heading, Para, Table, Image, Pre]


# --- rendering ---------------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Para):
            out.append(block.text)
        elif isinstance(block, Table):
            align = block.align or ["l"] + ["r"] * (len(block.header) - 1)
            out.append("\n".join(
                ["| " + " | ".join(_md_cell(h) for h in block.header) + " |",
                 "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
                + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]))
        elif isinstance(block, Image):
            out.append(f"![{block.alt}](plots/{block.name})")
        elif isinstance(block, Pre):
            out.append(f"```\n{block.text}\n```")
    return "\n\n".join(out) + "\n"


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; background: #fff; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .35em .6em; vertical-align: top; }
th { background: #f3f3f3; }
td.r { text-align: right; white-space: nowrap; }
img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: .8em; white-space: pre-wrap; font-size: .85em; }
"""


def render_html(blocks: Sequence[Block], title: str) -> str:
    out = ["<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">",
           f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>"]
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            out.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Table):
            align = block.align or ["l"] + ["r"] * (len(block.header) - 1)
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in block.header)
            body = "".join("<tr>" + "".join(f"<td class=\"{a}\">{html.escape(str(c))}</td>" for a, c in zip(align, row))
                           + "</tr>" for row in block.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, Image):
            data = base64.b64encode(block.png).decode("ascii")
            out.append(f"<p><img src=\"data:image/png;base64,{data}\" alt=\"{html.escape(block.alt)}\"></p>")
        elif isinstance(block, Pre):
            out.append(f"<pre>{html.escape(block.text)}</pre>")
    out.append("</body>\n</html>\n")
    return "\n".join(out)


# --- plots -------------------------------------------------------------------------------------

def png_bytes(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # Agg canvas by default: no display, no pyplot state
    return Figure(figsize=(width, height))


def bucket_plot(metrics: dict[str, Any]) -> bytes:
    """Grouped bars: ROUGE-L per system in each reference-length bucket, with 95% CI whiskers."""
    buckets = metrics["length_buckets"]["buckets"]
    systems = list(metrics["systems"])
    fig = new_figure(7.5, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(systems), 1)
    for j, system in enumerate(systems):
        xs, ys, err_low, err_high = [], [], [], []
        for i, bucket in enumerate(buckets):
            m = bucket["systems"].get(system, {})
            if m.get("rougeL") is None:
                continue
            xs.append(i + (j - (len(systems) - 1) / 2) * width)
            ys.append(m["rougeL"])
            err_low.append(m["rougeL"] - m["rougeL_low"])
            err_high.append(m["rougeL_high"] - m["rougeL"])
        ax.bar(xs, ys, width, yerr=[err_low, err_high], capsize=3, label=SYSTEM_LABELS.get(system, system),
               color=COLORS.get(system))
    ax.set_xticks(range(len(buckets)), [f"{b['name']}\n(n={b['n']})" for b in buckets])
    ax.set_ylabel("ROUGE-L F1 (x100)")
    ax.set_title("ROUGE-L by reference length (95% bootstrap CI)")
    ax.legend(frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return png_bytes(fig)


def reliability_plot(calibration: dict[str, dict[str, Any]]) -> bytes:
    """One reliability diagram per student: observed rate of "above the prompt's median" per
    confidence bin against the diagonal, with the bin counts."""
    students = list(calibration)
    fig = new_figure(4.2 * max(len(students), 1), 4.0)
    for k, system in enumerate(students):
        c = calibration[system]
        ax = fig.add_subplot(1, max(len(students), 1), k + 1)
        ax.plot([0, 1], [0, 1], "--", color="#888", linewidth=1, label="perfect calibration")
        filled = [b for b in c.get("bins", []) if b["count"]]
        width = filled[0]["high"] - filled[0]["low"] if filled else 0.1
        ax.bar([b["low"] for b in filled], [b["accuracy"] for b in filled], width, align="edge",
               color=COLORS.get(system, "#999"), alpha=0.75, edgecolor="#333", label="observed rate")
        ax.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], "o", color="#222",
                markersize=3, label="mean confidence")
        for b in filled:
            ax.annotate(str(b["count"]), (b["low"] + width / 2, b["accuracy"]), ha="center", va="bottom",
                        fontsize=7)
        ece = "n/a" if c.get("ece") is None else f"{c['ece']:.3f}"
        ax.set_title(f"{SYSTEM_LABELS.get(system, system)}: ECE {ece}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("confidence exp(log P̄)")
        if k == 0:
            ax.set_ylabel("fraction above prompt median ROUGE-L")
            ax.legend(frameon=False, fontsize=7, loc="upper left")
    return png_bytes(fig)


def training_plot(train_log: pd.DataFrame) -> bytes:
    """Calibration training curves: loss, pair accuracy and margin per optimizer step."""
    columns = [c for c in ("loss", "pair_accuracy", "margin") if c in train_log.columns]
    fig = new_figure(4.0 * max(len(columns), 1), 3.2)
    steps = train_log["step"] if "step" in train_log.columns else pd.Series(range(1, len(train_log) + 1))
    for k, column in enumerate(columns):
        ax = fig.add_subplot(1, len(columns), k + 1)
        ax.plot(steps, train_log[column], color="#bbb", linewidth=1, label="per step")
        window = max(1, len(train_log) // 10)
        ax.plot(steps, train_log[column].rolling(window, min_periods=1).mean(), color="#2a6", linewidth=2,
                label=f"mean of {window}")
        ax.set_title(column)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(frameon=False, fontsize=7)
    return png_bytes(fig)


# --- content -----------------------------------------------------------------------------------

# The number formats of every report and table (plad_core.table, plad_core.scale): "–" marks a missing value.

def num_text(value: Optional[float], digits: int = 2, signed: bool = False) -> str:
    """``value`` with ``digits`` decimals, with its sign when ``signed``."""
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def ci_text(m: Optional[dict[str, Any]], name: str, digits: int = 2, signed: bool = False) -> str:
    """``m[name]`` and its 95% CI ``[m[name_low], m[name_high]]``, as ``num_text``."""
    if not m or m.get(name) is None:
        return "–"
    low, high = (num_text(m[f"{name}_{end}"], digits, signed) for end in ("low", "high"))
    return f"{num_text(m[name], digits, signed)} [{low}, {high}]"


def difference_text(p: Optional[dict[str, Any]]) -> str:
    """A paired comparison's (``stats.paired_bootstrap``) difference and its 95% CI, signed."""
    return "–" if not p else f"{p['difference']:+.2f} [{p['low']:+.2f}, {p['high']:+.2f}]"


def p_text(p_value: float, n_resamples: int) -> str:
    """A bootstrap p-value of 0 only says p < 1/n_resamples."""
    return f"< {1 / n_resamples:.2g}" if p_value == 0 else f"{p_value:.3f}"


def _paired_sentence(p: Optional[dict[str, Any]], n_resamples: int) -> str:
    if not p:
        return "PLaD vs SFT: not computed (both systems are needed)."
    verdict = ("the 95% CI excludes zero" if p["low"] > 0 or p["high"] < 0
               else "the 95% CI includes zero: no detectable difference at this sample size")
    return (f"PLaD − SFT, ROUGE-L: {difference_text(p)}, paired bootstrap "
            f"p {'' if p['p_value'] == 0 else '= '}{p_text(p['p_value'], n_resamples)} over n = {p['n']} dev rows "
            f"({n_resamples} resamples); {verdict}.")


def _calibration_rows(calibration: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for system, c in calibration.items():
        rows.append([SYSTEM_LABELS.get(system, system), ci_text(c, "spearman", 3, signed=True),
                     f"{c['prompts_used']} / {c['prompts_skipped']}",
                     num_text(c["ece"], 3), num_text(c["mean_confidence"], 3), num_text(c["outcome_rate"], 3),
                     str(c["ece_samples"])])
    return rows


CALIBRATION_HEADER = ["student", "Spearman ρ (mean over prompts) [95% CI]", "prompts used / skipped", "ECE",
                      "mean confidence", "outcome rate", "ECE samples"]


def _bucket_rows(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    systems = list(metrics["systems"])
    header = ["bucket (reference words)", "n", *[f"{SYSTEM_LABELS.get(s, s)} ROUGE-L" for s in systems]]
    rows = [[b["name"], str(b["n"]), *[ci_text(b["systems"].get(s), "rougeL") for s in systems]]
            for b in metrics["length_buckets"]["buckets"]]
    return header, rows


def _wtl(w: Optional[dict[str, Any]]) -> str:
    return "–" if not w else f"{w['wins']} / {w['ties']} / {w['losses']}"


OPPONENT_LABELS = {"reference": "human reference", "sft": "SFT"}


def results_table(metrics: dict[str, Any]) -> Table:
    """The headline table: ROUGE-1/2/L, mean output tokens and, with a judge, the win rates against
    the human reference and the SFT student, each with its 95% CI; one row per system."""
    vs = (metrics.get("judge") or {}).get("vs", {})
    opponents = [o for o in OPPONENT_LABELS if o in vs]
    header = ["system", "ROUGE-1", "ROUGE-2", "ROUGE-L", "mean tokens",
              *[f"win rate vs {OPPONENT_LABELS[o]}" for o in opponents], "n"]
    rows = [[s, ci_text(m, "rouge1"), ci_text(m, "rouge2"), ci_text(m, "rougeL"), ci_text(m, "mean_output_tokens", 1),
             *[ci_text(vs[o].get(s), "win_rate", 1) for o in opponents], str(m["n"])]
            for s, m in metrics["systems"].items()]
    return Table(header, rows)


def _judge_blocks(metrics: dict[str, Any]) -> tuple[list[Block], list[Block]]:
    """(report blocks, summary blocks) of the judge's win rates and its position consistency."""
    judge, settings = metrics.get("judge"), metrics["settings"].get("judge")
    if not judge or not settings:
        note = [Para("Not computed (eval.judge.enabled = false).")]
        return [Heading("Judge win rate"), *note], []
    verdict = ("its next-token log-probability of \"A\" vs \"B\" after the prompt" if settings["backend"] == "hf"
               else "a standalone A or B parsed from its greedy answer")
    method = Para(
        f"Judge: {settings['model']} ({settings['backend']}; verdict: {verdict}), prompt conf/{settings['prompt']}, "
        f"{settings['rows']} dev rows. Each system's output is compared with the human reference and with the SFT "
        "student's output, twice with the positions swapped: a win when the judge prefers the system in both orders, "
        "a loss when it prefers the opponent in both, a tie otherwise. Win rate = (wins + ½·ties) / n (x100), with "
        f"95% bootstrap CIs over rows; W / T / L counts wins, ties and losses.")
    diagnostics = (f"position consistency {num_text(judge['consistency'], 1)}% (pairs whose two verdicts name "
                   f"the same candidate), position A chosen in {num_text(judge['a_rate'], 1)}% of readable verdicts, "
                   f"{judge['unreadable']} of {judge['judgments']} verdicts unreadable")
    if str(settings["model"]).startswith("embedded:"):
        caveat = Para(
            f"This judge is the embedded teacher, SmolLM2-135M-Instruct: a weak judge. A 135M-parameter model is far "
            f"too small to judge summaries reliably, and these win rates are not evidence of quality: {diagnostics}. "
            "Ties from inconsistent verdicts pull every win rate toward 50. Set eval.judge.model to a stronger "
            "local model, or eval.judge.backend=openai with eval.judge.api, for a judge worth reading.")
    else:
        caveat = Para(f"Judge diagnostics: {diagnostics}.")
    vs = judge["vs"]
    opponents = [o for o in OPPONENT_LABELS if o in vs]
    systems = list(metrics["systems"])
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
    table = Table(header, rows)
    buckets = [[b["name"], s, *[ci_text(b["judge"]["vs"].get(o, {}).get(s), "win_rate", 1) for o in opponents]]
               for b in metrics["length_buckets"]["buckets"] if b.get("judge") for s in systems]
    report: list[Block] = [Heading("Judge win rate"), method, caveat, table]
    if buckets:
        report += [Para("Win rates per reference-length bucket:"),
                   Table(["bucket", "system", *[f"vs {OPPONENT_LABELS[o]}" for o in opponents]], buckets,
                         ["l", "l", *["r"] * len(opponents)])]
    return report, [Para("Judge win rates (x100):"), table, caveat]


def _example_ids(references: pd.DataFrame, k: int) -> list[str]:
    """k dev rows spread over reference length: the rows at the (i + 0.5)/k quantiles of word count."""
    if k <= 0 or references.empty:
        return []
    ordered = references.assign(words=references["reference"].str.split().str.len()).sort_values(["words", "id"])
    positions = sorted({min(len(ordered) - 1, int((i + 0.5) / k * len(ordered))) for i in range(k)})
    return list(ordered["id"].iloc[positions])


def build_blocks(metrics: dict[str, Any], generations: pd.DataFrame, references: pd.DataFrame,
                 train_log: Optional[pd.DataFrame], provenance: dict[str, Any], title: str,
                 n_examples: int = 3) -> tuple[list[Block], list[Block]]:
    """(report blocks, summary blocks) for ``write_report``."""
    settings = metrics["settings"]
    n_resamples = settings["n_resamples"]
    systems = metrics["systems"]
    paired = metrics["paired"].get("plad_vs_sft")
    calibration = metrics["calibration"]
    buckets = metrics["length_buckets"]
    summary: list[Block] = [Heading(title, 2)]
    report: list[Block] = [Heading(title, 1), Para(
        f"{settings['dev_rows']} dev rows; greedy outputs scored with ROUGE F1 (x100, rouge-score with "
        f"stemming) against the human references. Brackets: 95% percentile-bootstrap CIs over rows "
        f"({n_resamples} resamples, seed {settings['seed']}).")]

    table = results_table(metrics)
    judged = " and the judge's win rates (x100, see Judge win rate)" if metrics.get("judge") else ""
    report += [Heading("Results"), Para(f"ROUGE F1 (x100), mean output length in tokens{judged}, each with its "
                                        "95% CI."), table]
    summary += [Para(f"ROUGE F1 (x100), mean output tokens{judged}, with 95% bootstrap CIs:"), table]

    paired_line = _paired_sentence(paired, n_resamples)
    report += [Heading("PLaD vs SFT (paired bootstrap)"), Para(
        "Per-row ROUGE-L differences on the same dev rows, resampled together; the p-value is two-sided "
        "(twice the smaller share of resampled mean differences on either side of zero)."), Para(paired_line)]
    if paired:
        report.append(Table(["comparison", "metric", "difference", "95% CI", "p", "n"],
                            [["PLaD − SFT", paired["metric"], num_text(paired["difference"], signed=True),
                              f"[{paired['low']:+.2f}, {paired['high']:+.2f}]", p_text(paired["p_value"], n_resamples),
                              str(paired["n"])]]))
    summary.append(Para(paired_line))

    header, rows = _bucket_rows(metrics)
    report += [Heading("By reference length"), Para(
        f"Dev rows bucketed by the human reference's length in words; edges {buckets['edges']} "
        f"({buckets['rule']}). ROUGE-L with 95% CIs; small buckets have wide intervals."),
        Table(header, rows), Image("by_length.png", bucket_plot(metrics), "ROUGE-L by reference length")]
    detail = []
    for b in buckets["buckets"]:
        for s, m in b["systems"].items():
            detail.append([b["name"], SYSTEM_LABELS.get(s, s), str(m["n"]), ci_text(m, "rouge1"), ci_text(m, "rouge2"),
                           ci_text(m, "rougeL"), ci_text(m, "mean_output_tokens", 1)])
    report += [Para("Every headline metric per bucket:"),
               Table(["bucket", "system", "n", "ROUGE-1", "ROUGE-2", "ROUGE-L", "mean tokens"], detail,
                     ["l", "l", "r", "r", "r", "r", "r"])]
    bucket_paired = [[b["name"], str(p["n"]), difference_text(p), p_text(p["p_value"], n_resamples)]
                     for b in buckets["buckets"] if (p := b["paired"].get("plad_vs_sft"))]
    if bucket_paired:
        report += [Para("PLaD − SFT ROUGE-L per bucket (paired bootstrap):"),
                   Table(["bucket", "n", "difference [95% CI]", "p"], bucket_paired)]
    bucket_calibration = [[b["name"], SYSTEM_LABELS.get(s, s),
                           num_text(c["spearman"], 3, signed=True),
                           f"{c['prompts_used']} / {c['prompts_skipped']}", num_text(c["ece"], 3),
                           str(c["ece_samples"])]
                          for b in buckets["buckets"] for s, c in b["calibration"].items()]
    if bucket_calibration:
        report += [Para("Calibration per bucket:"),
                   Table(["bucket", "student", "Spearman ρ", "prompts used / skipped", "ECE", "ECE samples"],
                         bucket_calibration, ["l", "l", "r", "r", "r", "r"])]
    summary += [Para("ROUGE-L by reference length:"), Table(header, rows)]

    report.append(Heading("Calibration"))
    if calibration:
        k = settings.get("calibration_samples")
        report += [Para(
            f"For each dev prompt the student samples K = {k} outputs (temperature "
            f"{settings.get('calibration_temperature')}, top-p {settings.get('calibration_top_p')}) and scores "
            "each with its own length-normalised log-likelihood log P̄(y|x) (mean log-prob per output token, "
            "EOS included) and with ROUGE-L against the reference. Spearman ρ: the within-prompt rank correlation "
            "of log P̄ and ROUGE-L, averaged over prompts (prompts where either is constant are skipped; CI over "
            "prompts). ECE: confidence c = exp(log P̄) read as the probability that the sample's ROUGE-L is "
            f"above the median of its prompt's K samples; ECE = Σ_b (|B_b|/N)·|rate_b − conf_b| over "
            f"{settings['calibration_bins']} equal-width bins of c, on the samples of prompts whose ROUGE-L "
            "values differ. Higher ρ and lower ECE are better calibrated; the outcome rate is the share of "
            "positives (below 0.5 when samples tie at the median)."),
            Table(CALIBRATION_HEADER, _calibration_rows(calibration)),
            Image("reliability.png", reliability_plot(calibration), "reliability diagram")]
        summary += [Para(f"Calibration of the students (K = {k} samples per dev prompt):"),
                    Table(CALIBRATION_HEADER, _calibration_rows(calibration))]
    else:
        report.append(Para("Not computed (eval.calibration_samples = 0, or no student among eval.systems)."))

    judge_report, judge_summary = _judge_blocks(metrics)
    report += judge_report
    summary += judge_summary

    report.append(Heading("Training curves (calibrate)"))
    if train_log is not None and len(train_log):
        first, last = train_log.iloc[0], train_log.iloc[-1]
        parts = [f"{c} {first[c]:.3f} → {last[c]:.3f}" for c in ("loss", "pair_accuracy", "margin")
                 if c in train_log.columns]
        report += [Para(f"{len(train_log)} optimizer steps of PLaD calibration; first → last step: "
                        + ", ".join(parts) + "."),
                   Image("training.png", training_plot(train_log), "calibration training curves")]
    else:
        report.append(Para("No train_log.parquet in the calibrate artifact."))

    report.append(Heading("Sample outputs"))
    example_ids = _example_ids(references, n_examples)
    by_system = {s: g.set_index("id") for s, g in generations.groupby("system")}
    refs = references.set_index("id")
    for i, row_id in enumerate(example_ids, 1):
        tail = str(refs.loc[row_id, "prompt"]) if "prompt" in refs.columns else ""
        tail = ("…" + tail[-PROMPT_TAIL_CHARS:]) if len(tail) > PROMPT_TAIL_CHARS else tail
        header, cells = ["reference"], [str(refs.loc[row_id, "reference"])]
        for s in systems:
            if s in by_system and row_id in by_system[s].index:
                g = by_system[s].loc[row_id]
                header.append(f"{SYSTEM_LABELS.get(s, s)} (ROUGE-L {100 * g['rougeL']:.1f})")
                cells.append(str(g["text"]))
        words = len(str(refs.loc[row_id, "reference"]).split())
        report += [Heading(f"Example {i}: {row_id} ({words} reference words)", 3),
                   Para("Prompt (tail):"), Pre(tail), Table(header, [cells], ["l"] * len(header))]

    report += [Heading("Provenance"), Para("Artifacts that produced this report (data/artifacts/<stage>/<key>):"),
               Table(["stage", "key"], [[k, v] for k, v in provenance.get("keys", {}).items()], ["l", "l"]),
               Para("Config slice read by the evaluate stage:"),
               Pre(json.dumps(provenance.get("config", {}), indent=2, ensure_ascii=False, default=str))]
    if provenance.get("report_path"):
        summary.append(Para(f"Full report: {provenance['report_path']}"))
    return report, summary


def write_report(out: Path, metrics: dict[str, Any], generations: pd.DataFrame, references: pd.DataFrame,
                 train_log: Optional[pd.DataFrame], provenance: dict[str, Any], title: str = "PLaD evaluation",
                 n_examples: int = 3) -> str:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` into ``out``; return the summary markdown.

    Args:
        metrics: ``plad_core.evaluate.evaluation_metrics``'s output (metrics.json).
        generations: system, id, text, rouge1/2/L (fractions), output_tokens.
        references: the dev rows: id, reference, prompt (the student's prompt, shown by its tail).
        train_log: the calibrate artifact's per-step log (loss, pair_accuracy, margin), or None.
        provenance: {"keys": {stage: key}, "config": the evaluate config slice, "report_path": str}.
    """
    report, summary = build_blocks(metrics, generations, references, train_log, provenance, title, n_examples)
    write_pages(out, report, title)
    return render_markdown(summary)


def write_pages(out: Path, blocks: Sequence[Block], title: str) -> None:
    """``report.md`` with its images in ``plots/``, and the self-contained ``report.html``, in ``out``."""
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for block in blocks:
        if isinstance(block, Image):
            (plots / block.name).write_bytes(block.png)
    (out / "report.md").write_text(render_markdown(blocks))
    (out / "report.html").write_text(render_html(blocks, title))
