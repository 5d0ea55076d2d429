"""The paper's table at our scale: PLaD against SFT, SeqKD, token KD and DPKD, trained from the same
SFT student on the same pseudo-preference pairs, over several seeds, with every dev metric. This
module holds what a table experiment is (its schema, checks and tuning grid, and ``Run``: one trained
system and seed); ``table_run.run_table`` runs it, ``table_results`` computes its numbers.

An experiment file (``conf/experiments/tldr_table.yaml``, schema ``TableExperiment``) names a pipeline
config, overrides for every run, the seeds and the trained systems (a name and ``train.*`` overrides
each). The SFT student and the teacher are always in the table: every Δ and every win rate "vs SFT"
is against the former. ``plad_core.experiments.table_run.run_table``:

1. builds the shared stages once (prepare_data .. build_pairs) and the SFT student's log-probs of
   every pair (score_pairs with the reference scorer DPO reads: the pair accuracy before training);
2. for each system and seed, score_pairs (reused unless the loss scores with the teacher) and
   calibrate with ``exp.overrides + extra + system.overrides + [train.optim.seed=<seed>]``;
3. one ``dev_outputs`` artifact per model (teacher, SFT once, each trained student): greedy outputs
   with ROUGE and the student's scored calibration samples, reused by every run that shares them;
4. the judge (``eval.judge``; off with ``eval.judge.enabled=false``) on all of them at once;
5. commits ``<artifacts_root>/table/<key>/``: table.json (``table_results``), report.md, report.html
   (with a discussion computed from the numbers) and summary.md (the headline table).

Trained systems are summarised by per-row metrics averaged over seeds, with 95% bootstrap CIs over
dev rows; the per-seed numbers are in table.json and the report. ``tuning_experiment`` turns the
experiment's ``tuning`` grid into a table of its own (one seed, no judge, no calibration sampling):
that tuning table's artifact is the record of the grid's results, and ``tuning_choice`` reads its
winner. The experiment file holds config only: the winner's values are copied into the tuned
systems' overrides (and ``tuning.chosen``) by hand, so a table never depends on which tuning
artifacts a store happens to hold.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, DictConfig

from plad_core.artifacts import Artifact
from plad_core.config import ConfigError
from plad_core.experiments.files import load_experiment_file

FIXED = ("teacher", "sft")            # always in the table, under these names
PLAD_LOSSES = ("ranking", "margin")   # the systems compared with every baseline


@dataclass
class TableSystem:
    name: str = MISSING
    overrides: list[str] = field(default_factory=list)  # train.* only: all start from one SFT student and one set of pairs


@dataclass
class Tuning:
    """A dev-only grid for one system (``plad table --tune``); its results live in the tuning artifact."""
    system: str = ""                                        # the tuned system: its overrides, then each grid point's
    grid: dict[str, list[Any]] = field(default_factory=dict)  # train.* key -> values (every combination runs)
    seed: int = 0
    chosen: dict[str, Any] = field(default_factory=dict)     # the values copied into the systems' overrides


@dataclass
class TableExperiment:
    name: str = "tldr_table"
    config: str = "demo"                                    # the pipeline config every run starts from
    overrides: list[str] = field(default_factory=list)      # dotlist applied to every run (the judge: eval.judge.*)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # train.optim.seed of each trained system
    systems: list[TableSystem] = field(default_factory=list)
    tuning: Tuning = field(default_factory=Tuning)


def check_experiment(exp: TableExperiment, where: str) -> TableExperiment:
    """Clear errors for what the schema cannot express: distinct seeds and names, train.* overrides only."""
    if not exp.seeds or len(set(exp.seeds)) != len(exp.seeds):
        raise ConfigError(f"{where}: seeds {exp.seeds} must be a non-empty list of distinct integers")
    names = [s.name for s in exp.systems]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"{where}: systems need distinct names, got {names}")
    for i, system in enumerate(exp.systems):
        if system.name.lower() in FIXED or "@" in system.name or not system.name.strip():
            raise ConfigError(f"{where}: systems[{i}].name '{system.name}': the teacher and SFT are always in the "
                              "table under their own names, and a name may not contain '@'")
        for item in system.overrides:
            key = item.split("=", 1)[0]
            if "=" not in item or not key.startswith("train.") or key == "train.optim.seed":
                raise ConfigError(f"{where}: systems[{i}] ({system.name}) override '{item}': systems differ only in "
                                  "training, so each override is train.<key>=<value> (not train.optim.seed: "
                                  "that is the experiment's seeds); put others in the experiment's overrides")
    t = exp.tuning
    if t.grid:
        if t.system not in names:
            raise ConfigError(f"{where}: tuning.system '{t.system}' is not one of the systems {names}")
        bad = [k for k, v in t.grid.items() if not k.startswith("train.") or k == "train.optim.seed" or not v]
        if bad:
            raise ConfigError(f"{where}: tuning.grid keys {bad} must be train.* keys (not the seed) with values")
    return exp


def load_experiment(name_or_path: str) -> TableExperiment:
    """A table experiment by name under conf/experiments/ or by YAML path, strictly."""
    exp, path = load_experiment_file(TableExperiment, name_or_path)
    return check_experiment(exp, str(path))


def run_overrides(exp: TableExperiment, system: TableSystem, seed: int, extra: Optional[list[str]] = None) -> list[str]:
    """The dotlist of one trained run: the experiment's, ``extra``, the system's, then its seed."""
    return [*exp.overrides, *(extra or []), *system.overrides, f"train.optim.seed={seed}"]


def _point_label(keys: list[str], values: tuple[Any, ...]) -> str:
    return " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(keys, values))


def grid_points(tuning: Tuning) -> dict[str, dict[str, Any]]:
    """Each grid point's label (its tuning-table system name) -> its values, in grid order."""
    keys = list(tuning.grid)
    return {_point_label(keys, values): dict(zip(keys, values))
            for values in itertools.product(*(tuning.grid[k] for k in keys))}


def tuning_choice(exp: TableExperiment, rouge_l: dict[str, float]) -> tuple[str, dict[str, Any]]:
    """The grid point with the highest dev ROUGE-L in a tuning artifact's ``rouge_l`` (its manifest's
    stats ``rougeL``: system -> ROUGE-L), and its values: what to copy into the tuned systems' overrides."""
    points = grid_points(exp.tuning)
    missing = sorted(set(points) - set(rouge_l))
    if missing:
        raise ValueError(f"experiment {exp.name}: the tuning artifact has no ROUGE-L for grid points {missing}")
    best = max(points, key=lambda label: rouge_l[label])
    return best, points[best]


def tuning_experiment(exp: TableExperiment) -> TableExperiment:
    """The experiment's tuning grid as a table: one system per grid point (the tuned system's overrides,
    then the point's), ``tuning.seed`` only, without calibration sampling or judge (ROUGE-L decides)."""
    t = exp.tuning
    if not t.grid:
        raise ConfigError(f"experiment {exp.name}: no tuning.grid to run")
    tuned = next(s for s in exp.systems if s.name == t.system)
    systems = [TableSystem(label, [*tuned.overrides, *(f"{k}={v}" for k, v in point.items())])
               for label, point in grid_points(t).items()]
    return check_experiment(TableExperiment(
        name=f"{exp.name}_tuning", config=exp.config, seeds=[t.seed], systems=systems,
        overrides=[*exp.overrides, "eval.calibration_samples=0", "eval.judge.enabled=false"]), f"{exp.name} tuning")


@dataclass(frozen=True)
class Run:
    """One trained system at one seed: its config, calibrate artifact and dev outputs."""
    system: str
    seed: int
    loss: str
    cfg: DictConfig
    calibrated: Artifact
    outputs: Artifact

    @property
    def label(self) -> str:
        return f"{self.system}@{self.seed}"
