"""The ``distill-scale`` flow: the data-scale experiment, one ``distill`` subflow per fraction of the
unlabeled split (``plad_core.experiments.scale``), then the plot of the metric against pairs used."""

from __future__ import annotations

from typing import Any, Optional

from prefect import flow

from flows.distill import distill
from flows.publish import publish_summary
from plad_core.experiments.scale import load_experiment, run_scale


def _distill_artifacts(config: str, overrides: list[str]) -> dict[str, str]:
    return distill(config=config, overrides=overrides)["artifacts"]


@flow(name="distill-scale", log_prints=True)
def distill_scale(experiment: str = "data_scale", overrides: Optional[list[str]] = None) -> dict[str, Any]:
    """The distill flow over growing shares of the unlabeled split.

    Args:
        experiment: a name under conf/experiments/ (data_scale) or a YAML path.
        overrides: OmegaConf dotlist applied to every run, after the experiment's own.
    """
    exp = load_experiment(experiment)
    result = run_scale(exp, _distill_artifacts, overrides)
    publish_summary("distill-scale", exp.name, result)
    return {"experiment": exp.name, "artifact": str(result.path), "points": result.manifest["stats"]["points"]}
