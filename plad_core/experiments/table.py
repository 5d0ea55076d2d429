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
experiment's ``tuning`` grid into a table of its own (one seed, no judge, no calibration sampling,
evaluated on a labeled tuning slice outside every split instead of dev):
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
    """A grid (``plad table --tune``) run for each tuned system on a labeled slice outside every split
    (``stages.tune_data``), never on dev; its results live in the tuning artifact."""
    system: str = ""                                        # a tuned system: its overrides, then each grid point's
    systems: list[str] = field(default_factory=list)        # more tuned systems, each over the same grid (same budget)
    grid: dict[str, list[Any]] = field(default_factory=dict)  # train.* key -> values (every combination runs)
    # A tuned system's own grid in place of ``grid`` (a baseline tuned on its own lever, e.g. SeqKD's lr where
    # PLaD's is nll_weight); every tuned system's grid has the same number of points: the same budget.
    grids: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    seed: int = 0
    rows: int = 128                                         # the tuning slice: rows of data.path in no split
    chosen: dict[str, Any] = field(default_factory=dict)     # the values copied into the systems' overrides

    def tuned_systems(self) -> list[str]:
        """The systems the grid tunes: ``system``, ``systems``, then those of ``grids``, each once."""
        return list(dict.fromkeys([*([self.system] if self.system else []), *self.systems, *self.grids]))

    def system_grid(self, system: str) -> dict[str, list[Any]]:
        """A tuned system's grid: its own in ``grids``, else the shared ``grid``."""
        return dict(self.grids.get(system, self.grid))


@dataclass
class TableExperiment:
    name: str = "tldr_table"
    config: str = "demo"                                    # the pipeline config every run starts from
    overrides: list[str] = field(default_factory=list)      # dotlist applied to every run (the judge: eval.judge.*)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # train.optim.seed of each trained system
    systems: list[TableSystem] = field(default_factory=list)
    tuning: Tuning = field(default_factory=Tuning)
    tune_rows: int = 0  # 0: evaluate on dev; > 0 (set by tuning_experiment): on the tuning slice of that many rows


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
    if t.grid or t.grids:
        unknown = [s for s in t.tuned_systems() if s not in names]
        if unknown or not t.tuned_systems():
            raise ConfigError(f"{where}: tuning.system/tuning.systems/tuning.grids {unknown or '(none)'} must name "
                              f"systems of {names}")
        if t.rows < 1:
            raise ConfigError(f"{where}: tuning.rows {t.rows} must be at least 1 (the tuning slice's rows)")
        for system in t.tuned_systems():
            path = f"tuning.grids.{system}" if system in t.grids else "tuning.grid"
            grid = t.system_grid(system)
            bad = [k for k, v in grid.items() if not k.startswith("train.") or k == "train.optim.seed" or not v]
            if bad or not grid:
                raise ConfigError(f"{where}: {path} keys {bad} must be train.* keys (not the seed) with values "
                                  f"(tuned system {system})")
        sizes = {s: len(grid_points(t, s)) for s in t.tuned_systems()}
        if len(set(sizes.values())) > 1:
            raise ConfigError(f"{where}: tuning grids of different sizes {sizes}: every tuned system gets the same "
                              "number of points (the same tuning budget)")
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


def grid_points(tuning: Tuning, system: str = "") -> dict[str, dict[str, Any]]:
    """Each grid point's label -> its values, in grid order, of ``system``'s grid (the shared one by default)."""
    grid = tuning.system_grid(system)
    keys = list(grid)
    return {_point_label(keys, values): dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))}


def tuning_runs(tuning: Tuning) -> dict[str, tuple[str, str]]:
    """Each tuning-table system name -> (tuned system, grid point label): the point's label alone when one
    system is tuned, "<system> <label>" when several are."""
    systems = tuning.tuned_systems()
    return {(label if len(systems) == 1 else f"{system} {label}"): (system, label)
            for system in systems for label in grid_points(tuning, system)}


def tuning_choice(exp: TableExperiment, rouge_l: dict[str, float]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Per tuned system, the grid point with the highest ROUGE-L on the tuning slice in a tuning artifact's
    ``rouge_l`` (its manifest's stats ``rougeL``: tuning-table system -> ROUGE-L), and its values: what to
    copy into that system's overrides."""
    runs = tuning_runs(exp.tuning)
    missing = sorted(set(runs) - set(rouge_l))
    if missing:
        raise ValueError(f"experiment {exp.name}: the tuning artifact has no ROUGE-L for grid points {missing}")
    out = {}
    for system in exp.tuning.tuned_systems():
        best = max((name for name, (s, _) in runs.items() if s == system), key=lambda name: rouge_l[name])
        out[system] = (best, grid_points(exp.tuning, system)[runs[best][1]])
    return out


def tuning_experiment(exp: TableExperiment) -> TableExperiment:
    """The experiment's tuning grid as a table: one system per tuned system and grid point (the tuned
    system's overrides, then the point's), ``tuning.seed`` only, without calibration sampling or judge,
    evaluated on the tuning slice of ``tuning.rows`` labeled rows outside every split (ROUGE-L decides)."""
    t = exp.tuning
    if not (t.grid or t.grids):
        raise ConfigError(f"experiment {exp.name}: no tuning.grid to run")
    by_name = {s.name: s for s in exp.systems}
    systems = [TableSystem(name, [*by_name[system].overrides,
                                  *(f"{k}={v}" for k, v in grid_points(t, system)[label].items())])
               for name, (system, label) in tuning_runs(t).items()]
    return check_experiment(TableExperiment(
        name=f"{exp.name}_tuning", config=exp.config, seeds=[t.seed], systems=systems, tune_rows=t.rows,
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
