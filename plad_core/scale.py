"""The data-scale experiment: the same distill flow over growing shares of the unlabeled split, and
one plot of a dev metric against the number of pairs the PLaD student was calibrated on.

An experiment file (``conf/experiments/data_scale.yaml``, schema ``ScaleExperiment``) names a
pipeline config, overrides for every run, the fractions and the metric. The run at fraction f adds
``pairs.unlabeled_fraction=f`` (pairs from the first ceil(f·n) unlabeled prompts, so the shares are
nested) and ``promotion.enabled=false`` (a student trained on part of the data must not become the
nightly champion). Every stage up to the sampling ones has the same key at every fraction, so it
is built once and reused from the artifact store; build_pairs and what follows rebuild per fraction.

The result is an artifact of its own, ``<artifacts_root>/data_scale/<key>/`` (report.md,
report.html, plots/scale.png, summary.md, scale.json), keyed by the experiment and the evaluate
keys it read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd
from plad_core import report
from plad_core.artifacts import Artifact, ArtifactStore, artifact_key
from plad_core.config import ConfigError, load_config
from plad_core.experiments import load_experiment_file
from plad_core.pairs import prompts_used

STAGE, VERSION = "data_scale", 1
METRICS = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "mean_output_tokens": "mean output tokens"}


@dataclass
class ScaleExperiment:
    name: str = "data_scale"
    config: str = "demo"                                      # the pipeline config every run starts from
    overrides: list[str] = field(default_factory=list)        # dotlist applied to every run
    fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])
    metric: str = "rougeL"                                    # a metrics.json system metric (METRICS)


def load_experiment(name_or_path: str) -> ScaleExperiment:
    """An experiment by name under conf/experiments/ or by YAML path, strictly (unknown keys fail)."""
    exp, path = load_experiment_file(ScaleExperiment, name_or_path)
    fractions = list(exp.fractions)
    if not fractions or fractions != sorted(set(fractions)) or not all(0 < f <= 1 for f in fractions):
        raise ConfigError(f"{path}: fractions {fractions} must be increasing, distinct and in (0, 1]")
    if exp.metric not in METRICS:
        raise ConfigError(f"{path}: metric '{exp.metric}' is not one of {', '.join(METRICS)}")
    return exp


def run_overrides(exp: ScaleExperiment, fraction: float, extra: Optional[list[str]] = None) -> list[str]:
    """The dotlist of the run at ``fraction``: the experiment's, then ``extra``, then the fraction and
    promotion off (last, so nothing can turn them back)."""
    return [*exp.overrides, *(extra or []), f"pairs.unlabeled_fraction={fraction}", "promotion.enabled=false"]


def scale_point(fraction: float, n_unlabeled: int, pairs_dir: Path, evaluate_dir: Path, metric: str) -> dict[str, Any]:
    """One fraction's row: prompts and pairs used, the metric (with CI) of each system, PLaD - SFT."""
    metrics = json.loads((evaluate_dir / "metrics.json").read_text())
    return {"fraction": fraction, "prompts": prompts_used(fraction, n_unlabeled),
            "pairs": len(pd.read_parquet(pairs_dir / "pairs.parquet")),
            "systems": {s: {k: m[k] for k in (metric, f"{metric}_low", f"{metric}_high", "n")}
                        for s, m in metrics["systems"].items()},
            "plad_vs_sft": metrics["paired"].get("plad_vs_sft"),
            "keys": {"build_pairs": pairs_dir.name, "evaluate": evaluate_dir.name}}


def scale_plot(points: list[dict[str, Any]], metric: str) -> bytes:
    """PLaD's metric (95% CI whiskers) against pairs used; the SFT student at 0 pairs, and as a dashed line."""
    label = METRICS[metric]
    fig = report.new_figure(6.5, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    sft = points[-1]["systems"].get("sft")
    if sft:
        ax.axhline(sft[metric], color=report.COLORS["sft"], linestyle="--", linewidth=1)
        ax.errorbar([0], [sft[metric]], yerr=[[sft[metric] - sft[f"{metric}_low"]], [sft[f"{metric}_high"] - sft[metric]]],
                    fmt="s", color=report.COLORS["sft"], capsize=4, label="SFT student (0 pairs)")
    plad = [(p["pairs"], p["systems"]["plad"], p["fraction"]) for p in points if "plad" in p["systems"]]
    xs, ys = [x for x, _, _ in plad], [m[metric] for _, m, _ in plad]
    ax.errorbar(xs, ys, yerr=[[m[metric] - m[f"{metric}_low"] for _, m, _ in plad],
                              [m[f"{metric}_high"] - m[metric] for _, m, _ in plad]],
                fmt="o-", color=report.COLORS["plad"], capsize=4, label="PLaD student")
    for x, y, (_, _, fraction) in zip(xs, ys, plad):
        ax.annotate(f"{fraction:.0%}", (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xlabel("pseudo-preference pairs used")
    ax.set_ylabel(f"{label} (dev, 95% CI)")
    ax.set_title(f"{label} against pairs used")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return report.png_bytes(fig)


def scale_blocks(exp: ScaleExperiment, points: list[dict[str, Any]], extra: list[str],
                 report_path: Path) -> tuple[list[report.Block], list[report.Block]]:
    """(report blocks, summary blocks): the table of points and the plot; the summary is the table."""
    metric, label = exp.metric, METRICS[exp.metric]
    rows = []
    for p in points:
        paired = p["plad_vs_sft"]
        rows.append([f"{p['fraction']:.0%}", str(p["prompts"]), str(p["pairs"]),
                     report.ci_text(p["systems"].get("plad"), metric), report.ci_text(p["systems"].get("sft"), metric),
                     report.difference_text(paired),
                     "–" if not paired else f"{paired['p_value']:.3f}", p["keys"]["evaluate"]])
    table = report.Table(["fraction", "unlabeled prompts", "pairs", f"PLaD {label}", f"SFT {label}",
                          "PLaD − SFT ROUGE-L [95% CI]", "p", "evaluate key"], rows)
    heading = report.Heading(f"Data scale: {exp.name} ({exp.config})", 1)
    blocks = [
        heading,
        report.Para(f"The distill flow on config {exp.config} with pairs from {len(points)} nested shares of the "
                    f"unlabeled split; everything before build_pairs is shared. {label} of the PLaD student on the "
                    "dev split against the pairs it was calibrated on, with 95% bootstrap CIs; the SFT student "
                    "(no pairs) for reference. PLaD − SFT is the paired per-row difference in ROUGE-L."),
        table,
        report.Image("scale.png", scale_plot(points, metric), f"{label} against pairs used"),
        report.Para("Overrides of every run: " + (", ".join([*exp.overrides, *extra]) or "none")
                    + "; then pairs.unlabeled_fraction=<fraction> and promotion.enabled=false."),
    ]
    return blocks, [heading, table, report.Para(f"Full report: {report_path}")]


def run_scale(exp: ScaleExperiment, run_one: Callable[[str, list[str]], dict[str, str]],
              extra: Optional[list[str]] = None) -> Artifact:
    """Run every fraction with ``run_one(config, overrides) -> {stage: artifact folder}`` (the distill
    flow, or plain stages), then commit the data_scale artifact with its report."""
    extra = list(extra or [])
    points = []
    for fraction in exp.fractions:
        overrides = run_overrides(exp, fraction, extra)
        cfg = load_config(exp.config, overrides)
        paths = run_one(exp.config, overrides)
        points.append(scale_point(fraction, cfg.data.n_unlabeled, Path(paths["build_pairs"]), Path(paths["evaluate"]),
                                  exp.metric))
    store = ArtifactStore(cfg.artifacts_root)
    config = {"experiment": asdict(exp), "extra": extra}
    upstream = {f"evaluate@{p['fraction']}": p["keys"]["evaluate"] for p in points}
    report_path = store.path(STAGE, artifact_key(STAGE, VERSION, config, upstream)) / "report.html"

    def build(out: Path, work: Path) -> dict[str, Any]:
        blocks, summary = scale_blocks(exp, points, extra, report_path)
        report.write_pages(out, blocks, f"Data scale: {exp.name}")
        (out / "summary.md").write_text(report.render_markdown(summary))
        (out / "scale.json").write_text(json.dumps({"experiment": asdict(exp), "points": points}, indent=2))
        return {"points": [{k: p[k] for k in ("fraction", "prompts", "pairs")} for p in points]}

    return store.materialize(STAGE, VERSION, config, upstream, build)
