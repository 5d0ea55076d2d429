"""The stage graph is declared once (``dag.STAGES``) and the code agrees with it: every runner takes
its declared inputs, in order, and the ``distill`` flow runs each stage after its inputs, handing it
their artifacts in that order."""

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest
from tiny import REPO

from plad_core.stages import DEPENDENCIES, RUNNERS, STAGES, Stage, code_version

# The name every runner gives the artifact of an upstream stage (one name per stage, everywhere).
ARGUMENT = {"data": "prepare_data", "init": "init_student", "sft": "sft_student", "teacher_samples": "sample_teacher",
            "student_samples": "sample_student", "built": "build_pairs", "pairs": "curate_pairs", "scores": "score_pairs",
            "calibrated": "calibrate", "tuned_teacher": "sft_teacher"}
DISTILL = REPO / "flows" / "distill.py"


def upstream_parameters(runner) -> list[str]:
    """The runner's parameters after (cfg, store) that take one upstream Artifact, which must come first."""
    names = list(inspect.signature(runner).parameters.values())
    assert [p.name for p in names[:2]] == ["cfg", "store"], runner.__name__
    upstream = [p.name for p in names[2:] if p.annotation == "Artifact"]
    assert [p.name for p in names[2:2 + len(upstream)]] == upstream, f"{runner.__name__}: upstream artifacts first"
    return upstream


def upstream_stages(runner) -> list[str]:
    return [ARGUMENT[name] for name in upstream_parameters(runner)]


def check_runner(name: str, stage: Stage) -> None:
    assert stage.runner.__name__ == f"run_{name}"
    assert upstream_stages(stage.runner) == list(stage.inputs), f"{name}: the runner's upstream is not its inputs"
    if not stage.on_demand:  # run_stage passes the upstream artifacts positionally, then force
        assert "force" in inspect.signature(stage.runner).parameters


@pytest.mark.parametrize("name", list(STAGES))
def test_every_runner_takes_its_declared_inputs_in_order(name):
    check_runner(name, STAGES[name])


def test_the_graph_is_acyclic_and_its_views_follow_it():
    seen: set[str] = set()
    for name, stage in STAGES.items():  # declared in an order that runs every stage after its inputs
        assert set(stage.inputs) <= seen, f"{name} is declared before its inputs {stage.inputs}"
        assert not any(STAGES[i].on_demand for i in stage.inputs) or stage.on_demand
        seen.add(name)
    assert list(DEPENDENCIES) == list(RUNNERS) == [n for n, s in STAGES.items() if not s.on_demand]
    assert DEPENDENCIES == {n: s.inputs for n, s in STAGES.items() if not s.on_demand}
    # the code fingerprint of each stage starts from the runner declared here
    assert code_version.STAGE_RUNNERS == {n: (s.runner.__module__, s.runner.__name__) for n, s in STAGES.items()}


def test_the_runner_check_fails_for_swapped_or_missing_inputs():
    stage = STAGES["calibrate"]
    swapped = (stage.inputs[1], stage.inputs[0], stage.inputs[2])
    for inputs in (swapped, stage.inputs[:2]):
        with pytest.raises(AssertionError, match="the runner's upstream is not its inputs"):
            check_runner("calibrate", dataclasses.replace(stage, inputs=inputs))


def flow_calls(path: Path) -> list[tuple[str, list[str], str | None]]:
    """The calls of the stage tasks in ``distill()``'s body, in source order: (task, names of its
    positional arguments after cfg and store, the variable its result is assigned to)."""
    tree = ast.parse(path.read_text())
    [distill] = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "distill"]
    calls = []
    for node in ast.walk(distill):
        value = node.value if isinstance(node, (ast.Assign, ast.Expr)) else None
        if isinstance(value, ast.IfExp):  # decision = promote(...) if ... else None
            value = value.body
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in STAGES:
            target = node.targets[0].id if isinstance(node, ast.Assign) else None
            args = [a.id if isinstance(a, ast.Name) else ast.dump(a) for a in value.args[2:]]
            calls.append((node.lineno, value.func.id, args, target))
    return [call[1:] for call in sorted(calls)]


def check_flow_order(calls: list[tuple[str, list[str], str | None]]) -> None:
    """Every DAG stage is called once, after its inputs, with their artifacts in its declared order."""
    produced: dict[str, str] = {}  # variable -> stage whose artifact it holds
    for name, args, target in calls:
        inputs = list(STAGES[name].inputs)
        assert all(i in produced.values() for i in inputs), f"{name} runs before one of its inputs {inputs}"
        assert [produced.get(a) for a in args[:len(inputs)]] == inputs, f"{name}({args}): inputs are {inputs}"
        produced[target] = name
    assert [name for name, _, _ in calls] == list(RUNNERS), "the flow runs every stage once, in STAGES order"


def test_the_distill_flow_runs_the_stages_in_an_order_consistent_with_stages():
    calls = flow_calls(DISTILL)
    assert [name for name, _, _ in calls][:3] == ["prepare_data", "init_student", "sft_student"]
    check_flow_order(calls)


def test_the_flow_check_fails_for_a_flow_that_swaps_two_calls_or_two_arguments():
    calls = flow_calls(DISTILL)
    at = {name: i for i, (name, _, _) in enumerate(calls)}
    swapped = list(calls)
    swapped[at["score_pairs"]], swapped[at["calibrate"]] = swapped[at["calibrate"]], swapped[at["score_pairs"]]
    with pytest.raises(AssertionError, match="runs before one of its inputs"):
        check_flow_order(swapped)
    name, args, target = calls[at["calibrate"]]
    crossed = list(calls)
    crossed[at["calibrate"]] = (name, [args[1], args[0], *args[2:]], target)
    with pytest.raises(AssertionError, match="inputs are"):
        check_flow_order(crossed)
