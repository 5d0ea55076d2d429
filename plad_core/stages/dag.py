"""The stage graph, declared once: every stage's runner and the stages it reads (in the order its runner
takes them). ``run_stage`` resolves it for plain Python callers and ``plad stage``;
``flows/distill.py`` calls the same runners as Prefect tasks (tests/stages/test_dag.py holds the two
to one order)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from omegaconf import DictConfig

from plad_core.artifacts import Artifact, ArtifactStore
from plad_core.stages.calibrate import run_calibrate
from plad_core.stages.curate import run_curate_pairs
from plad_core.stages.data import run_prepare_data
from plad_core.stages.evaluate import run_dev_outputs, run_evaluate, run_judgments
from plad_core.stages.pairs import run_build_pairs, run_score_pairs
from plad_core.stages.sampling import run_sample_student, run_sample_teacher
from plad_core.stages.student import run_init_student, run_sft_student
from plad_core.stages.teacher import run_sft_teacher


@dataclass(frozen=True)
class Stage:
    """``runner(cfg, store, *artifacts of inputs, force=...) -> Artifact``. The fingerprint of the code
    the runner reaches (``code_version.stage_fingerprint``) enters the artifact key, so editing that
    code rebuilds the stage's artifacts and, through their keys, all downstream ones. An ``on_demand``
    stage is not a node of the pipeline's DAG: evaluate and the table experiment build it with
    arguments of their own (a model, named outputs)."""
    runner: Callable[..., Artifact]
    inputs: tuple[str, ...]
    on_demand: bool = False


STAGES: dict[str, Stage] = {
    "prepare_data": Stage(run_prepare_data, ()),
    "init_student": Stage(run_init_student, ("prepare_data",)),
    "sft_student": Stage(run_sft_student, ("prepare_data", "init_student")),
    "sft_teacher": Stage(run_sft_teacher, ("prepare_data",)),
    "sample_teacher": Stage(run_sample_teacher, ("prepare_data", "sft_teacher")),
    "sample_student": Stage(run_sample_student, ("prepare_data", "sft_student")),
    "build_pairs": Stage(run_build_pairs, ("prepare_data", "sample_teacher", "sample_student")),
    "curate_pairs": Stage(run_curate_pairs, ("build_pairs", "sft_student")),
    "score_pairs": Stage(run_score_pairs, ("curate_pairs", "sft_student")),
    "calibrate": Stage(run_calibrate, ("curate_pairs", "sft_student", "score_pairs")),
    "evaluate": Stage(run_evaluate, ("prepare_data", "sft_student", "calibrate")),
    # one model's dev outputs (the teacher's without a model artifact), and the judge's verdicts on named ones
    "dev_outputs": Stage(run_dev_outputs, ("prepare_data",), on_demand=True),
    "judgments": Stage(run_judgments, ("prepare_data",), on_demand=True),
}

# Views of STAGES for callers: the pipeline's stages (the ones run_stage, the flow and --force know).
DEPENDENCIES: dict[str, tuple[str, ...]] = {name: s.inputs for name, s in STAGES.items() if not s.on_demand}
RUNNERS: dict[str, Callable[..., Artifact]] = {name: s.runner for name, s in STAGES.items() if not s.on_demand}


def run_stage(name: str, cfg: DictConfig, store: ArtifactStore, force: frozenset[str] = frozenset(),
              done: dict[str, Artifact] | None = None) -> Artifact:
    """Materialize ``name`` and, first, whatever it depends on (reused when already in the store).

    Stages in ``force`` are rebuilt even when their artifact exists.
    """
    if name not in RUNNERS:
        raise KeyError(f"unknown stage '{name}'; stages: {', '.join(RUNNERS)}")
    done = {} if done is None else done
    if name not in done:
        stage = STAGES[name]
        upstream = [run_stage(dep, cfg, store, force, done) for dep in stage.inputs]
        done[name] = stage.runner(cfg, store, *upstream, force=name in force)
    return done[name]
