"""The reports' matplotlib figures, as PNG bytes: ROUGE-L by reference length, the reliability diagram,
the calibration training curves and the data-scale plot. They are drawn on matplotlib's Agg canvas:
no display, no global pyplot state."""

from __future__ import annotations

import io
from typing import Any

import pandas as pd

from plad_core.report.text import METRIC_LABELS, SYSTEM_LABELS

COLORS = {"teacher": "#4c72b0", "sft": "#dd8452", "plad": "#55a868"}


def png_bytes(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import (
        Figure,  # Agg canvas by default: no display, no pyplot state
    )
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


def scale_plot(points: list[dict[str, Any]], metric: str) -> bytes:
    """PLaD's metric (95% CI whiskers) against pairs used; the SFT student at 0 pairs, and as a dashed line."""
    label = METRIC_LABELS[metric]
    fig = new_figure(6.5, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    sft = points[-1]["systems"].get("sft")
    if sft:
        ax.axhline(sft[metric], color=COLORS["sft"], linestyle="--", linewidth=1)
        ax.errorbar([0], [sft[metric]], yerr=[[sft[metric] - sft[f"{metric}_low"]], [sft[f"{metric}_high"] - sft[metric]]],
                    fmt="s", color=COLORS["sft"], capsize=4, label="SFT student (0 pairs)")
    plad = [(p["pairs"], p["systems"]["plad"], p["fraction"]) for p in points if "plad" in p["systems"]]
    xs, ys = [x for x, _, _ in plad], [m[metric] for _, m, _ in plad]
    ax.errorbar(xs, ys, yerr=[[m[metric] - m[f"{metric}_low"] for _, m, _ in plad],
                              [m[f"{metric}_high"] - m[metric] for _, m, _ in plad]],
                fmt="o-", color=COLORS["plad"], capsize=4, label="PLaD student")
    for x, y, (_, _, fraction) in zip(xs, ys, plad):
        ax.annotate(f"{fraction:.0%}", (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xlabel("pseudo-preference pairs used")
    ax.set_ylabel(f"{label} (dev, 95% CI)")
    ax.set_title(f"{label} against pairs used")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return png_bytes(fig)
