"""The data-scale experiment's report: one row per fraction of the unlabeled split and the plot of the
metric against the pairs used (``plad_core.experiments.scale``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plad_core.report.blocks import Block, Heading, Image, Para, Table
from plad_core.report.plots import scale_plot
from plad_core.report.text import METRIC_LABELS, ci_text, difference_text

Experiment = Any  # plad_core.experiments.scale.ScaleExperiment


def scale_blocks(exp: Experiment, points: list[dict[str, Any]], extra: list[str],
                 report_path: Path) -> tuple[list[Block], list[Block]]:
    """(report blocks, summary blocks): the table of points and the plot; the summary is the table."""
    metric, label = exp.metric, METRIC_LABELS[exp.metric]
    rows = []
    for p in points:
        paired = p["plad_vs_sft"]
        rows.append([f"{p['fraction']:.0%}", str(p["prompts"]), str(p["pairs"]),
                     ci_text(p["systems"].get("plad"), metric), ci_text(p["systems"].get("sft"), metric),
                     difference_text(paired),
                     "–" if not paired else f"{paired['p_value']:.3f}", p["keys"]["evaluate"]])
    table = Table(["fraction", "unlabeled prompts", "pairs", f"PLaD {label}", f"SFT {label}",
                   "PLaD − SFT ROUGE-L [95% CI]", "p", "evaluate key"], rows)
    heading = Heading(f"Data scale: {exp.name} ({exp.config})", 1)
    blocks = [
        heading,
        Para(f"The distill flow on config {exp.config} with pairs from {len(points)} nested shares of the "
             f"unlabeled split; everything before build_pairs is shared. {label} of the PLaD student on the "
             "dev split against the pairs it was calibrated on, with 95% bootstrap CIs; the SFT student "
             "(no pairs) for reference. PLaD − SFT is the paired per-row difference in ROUGE-L."),
        table,
        Image("scale.png", scale_plot(points, metric), f"{label} against pairs used"),
        Para("Overrides of every run: " + (", ".join([*exp.overrides, *extra]) or "none")
             + "; then pairs.unlabeled_fraction=<fraction> and promotion.enabled=false."),
    ]
    return blocks, [heading, table, Para(f"Full report: {report_path}")]
