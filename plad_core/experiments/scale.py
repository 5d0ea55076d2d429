"""The data-scale experiment: the same distill flow over growing shares of the unlabeled split, and
one plot of a dev metric against the number of pairs the PLaD student was calibrated on.

An experiment file (``conf/experiments/data_scale.yaml``, schema ``ScaleExperiment``) names a
pipeline config, overrides for every run, the fractions and the metric. The run at fraction f adds
``pairs.unlabeled_fraction=f`` (pairs from the first ceil(f·n) unlabeled prompts, so the shares are
nested) and ``promotion.enabled=false`` (a student trained on part of the data must not become the
nightly champion). Every stage up to the sampling ones has the same key at every fraction, so it
is built once and reused from the artifact store; build_pairs and what follows rebuild per fraction
(the pairs counted are curate_pairs', the ones the student is trained on).

The result is an artifact of its own, ``<artifacts_root>/data_scale/<key>/`` (report.md,
report.html, plots/scale.png, summary.md, scale.json; the report is ``plad_core.report.scale``), keyed
by the experiment and the evaluate keys it read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd

from plad_core.artifacts import Artifact, ArtifactStore
from plad_core.config import ConfigError, load_config
from plad_core.experiments.files import (
    ExperimentPages,
    commit_experiment,
    load_experiment_file,
)
from plad_core.pairs import prompts_used
from plad_core.report.scale import scale_blocks
from plad_core.report.text import METRIC_LABELS
from plad_core.stages import code_version

STAGE = "data_scale"


@dataclass
class ScaleExperiment:
    name: str = "data_scale"
    config: str = "demo"                                      # the pipeline config every run starts from
    overrides: list[str] = field(default_factory=list)        # dotlist applied to every run
    fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])
    metric: str = "rougeL"                                    # a metrics.json system metric (METRIC_LABELS)


def load_experiment(name_or_path: str) -> ScaleExperiment:
    """An experiment by name under conf/experiments/ or by YAML path, strictly (unknown keys fail)."""
    exp, path = load_experiment_file(ScaleExperiment, name_or_path)
    fractions = list(exp.fractions)
    if not fractions or fractions != sorted(set(fractions)) or not all(0 < f <= 1 for f in fractions):
        raise ConfigError(f"{path}: fractions {fractions} must be increasing, distinct and in (0, 1]")
    if exp.metric not in METRIC_LABELS:
        raise ConfigError(f"{path}: metric '{exp.metric}' is not one of {', '.join(METRIC_LABELS)}")
    return exp


def run_overrides(exp: ScaleExperiment, fraction: float, extra: Optional[list[str]] = None) -> list[str]:
    """The dotlist of the run at ``fraction``: the experiment's, then ``extra``, then the fraction and
    promotion off (last, so nothing can turn them back)."""
    return [*exp.overrides, *(extra or []), f"pairs.unlabeled_fraction={fraction}", "promotion.enabled=false"]


def scale_point(fraction: float, n_unlabeled: int, pairs_dir: Path, evaluate_dir: Path, metric: str) -> dict[str, Any]:
    """One fraction's row: prompts and (curated) pairs used, the metric (with CI) of each system, PLaD - SFT."""
    metrics = json.loads((evaluate_dir / "metrics.json").read_text())
    return {"fraction": fraction, "prompts": prompts_used(fraction, n_unlabeled),
            "pairs": len(pd.read_parquet(pairs_dir / "pairs.parquet")),
            "systems": {s: {k: m[k] for k in (metric, f"{metric}_low", f"{metric}_high", "n")}
                        for s, m in metrics["systems"].items()},
            "plad_vs_sft": metrics["paired"].get("plad_vs_sft"),
            "keys": {"build_pairs": json.loads((pairs_dir / "manifest.json").read_text())["upstream"]["build_pairs"],
                     "curate_pairs": pairs_dir.name, "evaluate": evaluate_dir.name}}


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
        points.append(scale_point(fraction, cfg.data.n_unlabeled, Path(paths["curate_pairs"]), Path(paths["evaluate"]),
                                  exp.metric))
    config = {"experiment": asdict(exp), "extra": extra}
    upstream = {f"evaluate@{p['fraction']}": p["keys"]["evaluate"] for p in points}

    def render(report_path: Path) -> ExperimentPages:
        blocks, summary = scale_blocks(exp, points, extra, report_path)
        return ExperimentPages(f"Data scale: {exp.name}", blocks, summary, "scale.json",
                               json.dumps({"experiment": asdict(exp), "points": points}, indent=2),
                               {"points": [{k: p[k] for k in ("fraction", "prompts", "pairs")} for p in points]})

    code = code_version.module_fingerprint(__name__)
    return commit_experiment(ArtifactStore(cfg.artifacts_root), STAGE, code, config, upstream, render)
