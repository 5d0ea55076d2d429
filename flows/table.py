"""The ``distill-table`` flow: the paper's table at our scale (``plad_core.experiments.table``), every stage,
calibration, dev-output and judge step a Prefect task named after its system and seed."""

from __future__ import annotations

from typing import Any, Optional

from prefect import flow

import tasks
from flows.publish import publish_summary
from plad_core.artifacts import Artifact
from plad_core.experiments.table import load_experiment, tuning_choice, tuning_experiment
from plad_core.experiments.table_run import STEPS, run_table

TASKS = {name: getattr(tasks, name) for name in STEPS}  # one Prefect task per step, same names as plad_core's


def task_step(name: str, *args: Any, label: str = "") -> Artifact:
    """``run_table``'s step as the Prefect task of that name, its run named ``label`` in the UI."""
    return TASKS[name].with_options(task_run_name=label or name)(*args)


@flow(name="distill-table", log_prints=True)
def distill_table(experiment: str = "tldr_table", overrides: Optional[list[str]] = None,
                  tune: bool = False) -> dict[str, Any]:
    """Train every system of the experiment from one SFT student and one set of pairs, over its seeds,
    and evaluate them all with the teacher and the SFT student.

    Args:
        experiment: a name under conf/experiments/ (tldr_table) or a YAML path.
        overrides: OmegaConf dotlist applied to every run, after the experiment's own.
        tune: run the experiment's tuning grid instead (one table row per tuned system and grid point),
            scored on a labeled slice outside every split (``tuning.rows``), never on dev; the result's
            ``chosen`` is, per tuned system, the point with the highest ROUGE-L there, read from that artifact.
    """
    exp = load_experiment(experiment)
    table = tuning_experiment(exp) if tune else exp
    result = run_table(table, overrides, task_step)
    publish_summary("distill-table", table.name, result)
    out = {"experiment": table.name, "artifact": str(result.path), "stats": result.manifest["stats"]}
    if tune:
        out["chosen"] = {}
        for system, (best, values) in tuning_choice(exp, result.manifest["stats"]["rougeL"]).items():
            out["chosen"][system] = {"point": best, "values": values}
            print(f"{system}: highest ROUGE-L on the tuning slice at {best}; copy "
                  f"{' '.join(f'{k}={v}' for k, v in values.items())} into its overrides (and tuning.chosen) "
                  "in the experiment file")
    return out
