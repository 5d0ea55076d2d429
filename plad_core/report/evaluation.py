"""The evaluation report: ``report.md`` and a self-contained ``report.html`` in the evaluate artifact.

Both are rendered from one list of blocks (``plad_core.report.blocks``); report.md links its plots as
``plots/*.png`` beside it, report.html embeds the same PNG bytes and needs nothing else to open.

``write_report`` also returns the summary markdown: the results table with CIs, the paired test,
the calibration, per-bucket ROUGE-L and the judge's win rates. The stage writes it as ``results.md``, which the
flow publishes as its Prefect markdown artifact and ``plad run`` prints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from plad_core import data as data_lib
from plad_core.report.blocks import (
    Block,
    Heading,
    Image,
    Para,
    Pre,
    Sections,
    Table,
    render_markdown,
    write_pages,
)
from plad_core.report.curation import curation_blocks
from plad_core.report.judge import judge_blocks, validity_para
from plad_core.report.plots import bucket_plot, reliability_plot, training_plot
from plad_core.report.text import (
    OPPONENT_LABELS,
    SYSTEM_LABELS,
    ci_text,
    difference_text,
    mde_text,
    num_text,
    p_text,
    power_text,
)

PROMPT_TAIL_CHARS = 400


def _paired_sentence(p: Optional[dict[str, Any]], n_resamples: int) -> str:
    if not p:
        return "PLaD vs SFT: not computed (both systems are needed)."
    verdict = ("the 95% CI excludes zero" if p["low"] > 0 or p["high"] < 0
               else "the 95% CI includes zero: no detectable difference at this sample size")
    return (f"PLaD − SFT, ROUGE-L: {difference_text(p)}, paired bootstrap "
            f"p {'' if p['p_value'] == 0 else '= '}{p_text(p['p_value'], n_resamples)} over n = {p['n']} dev rows "
            f"({n_resamples} resamples); {verdict}. {power_text(p)}.")


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


def _example_ids(references: pd.DataFrame, k: int) -> list[str]:
    """k dev rows spread over reference length: the rows at the (i + 0.5)/k quantiles of word count."""
    if k <= 0 or references.empty:
        return []
    ordered = references.assign(words=references["reference"].str.split().str.len()).sort_values(["words", "id"])
    positions = sorted({min(len(ordered) - 1, int((i + 0.5) / k * len(ordered))) for i in range(k)})
    return list(ordered["id"].iloc[positions])


# --- the sections, in report order ---------------------------------------------------------------

def _intro(settings: dict[str, Any]) -> Para:
    return Para(
        f"{settings['dev_rows']} dev rows; greedy outputs scored with ROUGE F1 (x100, rouge-score with "
        f"stemming) against the human references. Brackets: 95% percentile-bootstrap CIs over rows "
        f"({settings['n_resamples']} resamples, seed {settings['seed']}).")


def _results_section(metrics: dict[str, Any]) -> Sections:
    table = results_table(metrics)
    judged = " and the judge's win rates (x100, see Judge win rate)" if metrics.get("judge") else ""
    validity = [validity_para(metrics["judge"], metrics["settings"].get("judge"))] if metrics.get("judge") else []
    report = [Heading("Results"), Para(f"ROUGE F1 (x100), mean output length in tokens{judged}, each with its "
                                       "95% CI."), *validity, table]
    summary = [Para(f"ROUGE F1 (x100), mean output tokens{judged}, with 95% bootstrap CIs:"), *validity, table]
    return report, summary


def _paired_section(metrics: dict[str, Any]) -> Sections:
    """PLaD vs SFT; nothing for a ``plad eval`` of other models (metrics with ``paired_vs_baseline`` and no
    PLaD-SFT pair), whose report compares each model with its baseline instead."""
    n_resamples = metrics["settings"]["n_resamples"]
    paired = metrics["paired"].get("plad_vs_sft")
    if not paired and "paired_vs_baseline" in metrics:
        return [], []
    paired_line = _paired_sentence(paired, n_resamples)
    report: list[Block] = [Heading("PLaD vs SFT (paired bootstrap)"), Para(
        "Per-row ROUGE-L differences on the same dev rows, resampled together; the p-value is two-sided "
        "(twice the smaller share of resampled mean differences on either side of zero). MDE: the smallest "
        "true difference detected with 80% power at α = 0.05, (z₀.₉₇₅ + z₀.₈) · sd(d) / √n ≈ 2.80 · sd(d) / √n "
        "for the per-row differences d."), Para(paired_line)]
    if paired:
        report.append(Table(["comparison", "metric", "difference", "95% CI", "p", "n", "MDE (80% power)"],
                            [["PLaD − SFT", paired["metric"], num_text(paired["difference"], signed=True),
                              f"[{paired['low']:+.2f}, {paired['high']:+.2f}]", p_text(paired["p_value"], n_resamples),
                              str(paired["n"]), mde_text(paired)]]))
    return report, [Para(paired_line)]


def _bucket_details(buckets: dict[str, Any], n_resamples: int) -> list[Block]:
    """Every headline metric, PLaD − SFT and the calibration, per bucket."""
    detail = []
    for b in buckets["buckets"]:
        for s, m in b["systems"].items():
            detail.append([b["name"], SYSTEM_LABELS.get(s, s), str(m["n"]), ci_text(m, "rouge1"), ci_text(m, "rouge2"),
                           ci_text(m, "rougeL"), ci_text(m, "mean_output_tokens", 1)])
    report: list[Block] = [Para("Every headline metric per bucket:"),
                           Table(["bucket", "system", "n", "ROUGE-1", "ROUGE-2", "ROUGE-L", "mean tokens"], detail,
                                 ["l", "l", "r", "r", "r", "r", "r"])]
    bucket_paired = [[b["name"], str(p["n"]), difference_text(p), p_text(p["p_value"], n_resamples), mde_text(p)]
                     for b in buckets["buckets"] if (p := b["paired"].get("plad_vs_sft"))]
    if bucket_paired:
        report += [Para("PLaD − SFT ROUGE-L per bucket (paired bootstrap; MDE at 80% power, α = 0.05):"),
                   Table(["bucket", "n", "difference [95% CI]", "p", "MDE"], bucket_paired)]
    bucket_calibration = [[b["name"], SYSTEM_LABELS.get(s, s),
                           num_text(c["spearman"], 3, signed=True),
                           f"{c['prompts_used']} / {c['prompts_skipped']}", num_text(c["ece"], 3),
                           str(c["ece_samples"])]
                          for b in buckets["buckets"] for s, c in b["calibration"].items()]
    if bucket_calibration:
        report += [Para("Calibration per bucket:"),
                   Table(["bucket", "student", "Spearman ρ", "prompts used / skipped", "ECE", "ECE samples"],
                         bucket_calibration, ["l", "l", "r", "r", "r", "r"])]
    return report


def _bucket_section(metrics: dict[str, Any]) -> Sections:
    buckets = metrics["length_buckets"]
    header, rows = _bucket_rows(metrics)
    report: list[Block] = [Heading("By reference length"), Para(
        f"Dev rows bucketed by the human reference's length in words; edges {buckets['edges']} "
        f"({buckets['rule']}). ROUGE-L with 95% CIs; small buckets have wide intervals."),
        Table(header, rows), Image("by_length.png", bucket_plot(metrics), "ROUGE-L by reference length")]
    report += _bucket_details(buckets, metrics["settings"]["n_resamples"])
    return report, [Para("ROUGE-L by reference length:"), Table(header, rows)]


def _calibration_section(metrics: dict[str, Any]) -> Sections:
    settings, calibration = metrics["settings"], metrics["calibration"]
    report: list[Block] = [Heading("Calibration")]
    if not calibration:
        report.append(Para("Not computed (eval.calibration_samples = 0, or no student among eval.systems)."))
        return report, []
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
    summary = [Para(f"Calibration of the students (K = {k} samples per dev prompt):"),
               Table(CALIBRATION_HEADER, _calibration_rows(calibration))]
    return report, summary


def _training_section(train_log: Optional[pd.DataFrame]) -> list[Block]:
    report: list[Block] = [Heading("Training curves (calibrate)")]
    if train_log is None or not len(train_log):
        return report + [Para("No train_log.parquet in the calibrate artifact.")]
    first, last = train_log.iloc[0], train_log.iloc[-1]
    parts = [f"{c} {first[c]:.3f} → {last[c]:.3f}" for c in ("loss", "pair_accuracy", "margin")
             if c in train_log.columns]
    return report + [Para(f"{len(train_log)} optimizer steps of PLaD calibration; first → last step: "
                          + ", ".join(parts) + "."),
                     Image("training.png", training_plot(train_log), "calibration training curves")]


def _samples_section(systems: dict[str, Any], generations: pd.DataFrame, references: pd.DataFrame,
                     n_examples: int) -> list[Block]:
    report: list[Block] = [Heading("Sample outputs")]
    by_system = {s: g.set_index("id") for s, g in generations.groupby("system")}
    refs = references.set_index("id")
    for i, row_id in enumerate(_example_ids(references, n_examples), 1):
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
    return report


def _provenance_section(provenance: dict[str, Any]) -> list[Block]:
    return [Heading("Provenance"), Para("Artifacts that produced this report (data/artifacts/<stage>/<key>):"),
            Table(["stage", "key"], [[k, v] for k, v in provenance.get("keys", {}).items()], ["l", "l"]),
            Para("Config slice read by the evaluate stage:"),
            Pre(json.dumps(provenance.get("config", {}), indent=2, ensure_ascii=False, default=str))]


def build_blocks(metrics: dict[str, Any], generations: pd.DataFrame, references: pd.DataFrame,
                 train_log: Optional[pd.DataFrame], provenance: dict[str, Any], title: str,
                 n_examples: int = 3) -> Sections:
    """(report blocks, summary blocks) for ``write_report``."""
    report: list[Block] = [Heading(title, 1), _intro(metrics["settings"])]
    summary: list[Block] = [Heading(title, 2)]
    for section in (_results_section, _paired_section, _bucket_section, _calibration_section, judge_blocks,
                    curation_blocks):
        section_report, section_summary = section(metrics)
        report += section_report
        summary += section_summary
    report += _training_section(train_log)
    report += _samples_section(metrics["systems"], generations, references, n_examples)
    report += _provenance_section(provenance)
    if provenance.get("report_path"):
        summary.append(Para(f"Full report: {provenance['report_path']}"))
    return report, summary


def write_report(out: Path, metrics: dict[str, Any], generations: pd.DataFrame, references: pd.DataFrame,
                 train_log: Optional[pd.DataFrame], provenance: dict[str, Any], title: str = "PLaD evaluation",
                 n_examples: int = 3) -> str:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` into ``out``; return the summary markdown.

    Args:
        metrics: ``plad_core.evaluation.metrics.evaluation_metrics``'s output (metrics.json).
        generations: system, id, text, rouge1/2/L (fractions), output_tokens.
        references: the dev rows: id, reference, prompt (the student's prompt, shown by its tail).
        train_log: the calibrate artifact's per-step log (loss, pair_accuracy, margin), or None.
        provenance: {"keys": {stage: key}, "config": the evaluate config slice, "report_path": str}.
    """
    report, summary = build_blocks(metrics, generations, references, train_log, provenance, title, n_examples)
    write_pages(out, report, title)
    return render_markdown(summary)


def write_data_files(out: Path, cfg: Any, metrics: dict[str, Any], generations: pd.DataFrame,
                     samples: pd.DataFrame, dev: pd.DataFrame) -> pd.DataFrame:
    """generations.parquet, calibration_samples.parquet and metrics.json; returns the report's references
    (id, reference, and the prompt as the student sees it, without examples)."""
    generations.to_parquet(out / "generations.parquet", index=False)
    samples.to_parquet(out / "calibration_samples.parquet", index=False)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
    template = cfg.student.prompt.template
    return dev[["id", "reference"]].assign(
        prompt=[data_lib.render_prompt(r, template, [], "") for r in dev.to_dict("records")])
