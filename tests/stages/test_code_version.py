"""Artifact keys follow the code: an edit to code a stage runs changes that stage's fingerprint, and
through the upstream keys every downstream key, and no upstream one; a docstring or comment edit
changes nothing. Each test edits a copy of the package and fingerprints the copy."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from plad_core.artifacts import artifact_key
from plad_core.stages import STAGES, code_version, keys

PACKAGE = Path(code_version.__file__).resolve().parents[1]
ALL = set(code_version.STAGE_RUNNERS)


def copy_package(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name / "plad_core"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return root


def fingerprints(root: Path) -> dict[str, str]:
    return {stage: code_version.stage_fingerprint(stage, root) for stage in code_version.STAGE_RUNNERS}


def first_statement(path: Path, function: str) -> ast.stmt:
    """The first statement after the docstring of the top-level ``function`` in ``path``."""
    [node] = [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef) and n.name == function]
    body = node.body
    has_doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    return body[1] if has_doc else body[0]


def edit_body(root: Path, module: str, function: str) -> None:
    """Add a statement at the start of ``function``'s body (an edit that changes what it runs)."""
    path = root / module
    statement = first_statement(path, function)
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(statement.lineno - 1, " " * statement.col_offset + "_edited = 1\n")
    path.write_text("".join(lines))


def changed(tmp_path: Path, edit) -> set[str]:
    before = fingerprints(PACKAGE)  # a copy's fingerprints are the original's (names and code, not paths)
    root = copy_package(tmp_path, "after")
    edit(root)
    after = fingerprints(root)
    return {stage for stage in before if before[stage] != after[stage]}


def test_the_running_package_is_fingerprinted_and_keys_hold_it(tmp_path):
    prints = fingerprints(PACKAGE)
    assert fingerprints(copy_package(tmp_path, "copy")) == prints  # where the code lies does not count
    assert all(len(p) == 16 and int(p, 16) >= 0 for p in prints.values())
    assert len(set(prints.values())) == len(prints)  # every stage runs different code
    assert keys.stage_key("build_pairs", {"pairs": 1}, []) == artifact_key(
        "build_pairs", prints["build_pairs"], {"pairs": 1}, {})


def test_an_hf_sampling_edit_changes_the_stages_that_generate_with_hf_only(tmp_path):
    assert changed(tmp_path, lambda root: edit_body(root, "sampling/hf.py", "shared_prefix_length")) == {
        "sample_teacher", "sample_student", "dev_outputs", "evaluate"}


def test_docstrings_comments_and_blank_lines_change_nothing(tmp_path):
    def edit(root: Path) -> None:
        for module in ("sampling/hf.py", "stages/sampling.py", "stages/keys.py", "config/schema.py"):
            path = root / module
            tree = ast.parse(path.read_text())
            doc = ast.get_docstring(tree, clean=False)
            text = path.read_text().replace(doc, doc + " Edited.", 1) if doc else path.read_text()
            text = text.replace("\n\n\n", "\n\n\n# a new comment\n\n", 1).replace("):\n", "):  # note\n", 1)
            first_def = next(n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef))
            inner = ast.get_docstring(first_def, clean=False)
            if inner:
                text = text.replace(inner, inner + " More.", 1)
            assert text != path.read_text()
            path.write_text(text)
    assert changed(tmp_path, edit) == set()


def test_report_code_changes_evaluate_and_dev_output_code_the_stages_that_make_dev_outputs(tmp_path):
    assert changed(tmp_path, lambda root: edit_body(root, "report/evaluation.py", "results_table")) == {"evaluate"}
    assert changed(tmp_path / "b", lambda root: edit_body(root, "evaluation/dev_outputs.py", "calibration_rows")) == {
        "dev_outputs", "evaluate"}


def test_within_the_stages_package_only_the_definitions_a_runner_reaches_count(tmp_path):
    # evaluate.py holds three runners: writing the report is evaluate's alone
    assert changed(tmp_path, lambda root: edit_body(root, "stages/evaluate.py", "_write_outputs")) == {"evaluate"}
    # keys.py serves every stage: the judge's identity enters only what the judge touches
    assert changed(tmp_path / "b", lambda root: edit_body(root, "stages/keys.py", "judge_identity")) == {
        "evaluate", "judgments"}
    assert changed(tmp_path / "c", lambda root: edit_body(root, "stages/keys.py", "sampling_slice")) == {
        "sample_teacher", "sample_student"}


def test_config_code_counts_for_every_stage_that_calls_it(tmp_path):
    assert changed(tmp_path, lambda root: edit_body(root, "config/loading.py", "config_slice")) == ALL


def dag_keys(prints: dict[str, str]) -> dict[str, str]:
    """Every artifact key of one pipeline run, wired as the runners wire them: each stage's declared
    inputs, dev_outputs of the calibrated student, judgments keyed by those outputs' key."""
    found: dict[str, str] = {}
    for name, stage in STAGES.items():
        upstream = {u: found[u] for u in stage.inputs}
        config: dict = {"setting": name}
        if name == "dev_outputs":
            upstream["calibrate"] = found["calibrate"]
        if name == "judgments":
            config["systems"] = {"plad": found["dev_outputs"]}
        found[name] = artifact_key(name, prints[name], config, upstream)
    return found


def test_a_changed_fingerprint_changes_its_key_and_every_downstream_key_and_no_upstream_one():
    prints = fingerprints(PACKAGE)
    before = dag_keys(prints)
    cases = {  # the stage whose code changed: the keys that must change (read off the DAG by hand)
        "sample_student": {"sample_student", "build_pairs", "curate_pairs", "score_pairs", "calibrate", "evaluate",
                           "dev_outputs", "judgments"},
        "sft_student": ALL - {"prepare_data", "init_student", "sft_teacher", "sample_teacher"},
        "score_pairs": {"score_pairs", "calibrate", "evaluate", "dev_outputs", "judgments"},
        "evaluate": {"evaluate"},
        "prepare_data": ALL,
    }
    for stage, expected in cases.items():
        after = dag_keys({**prints, stage: "0" * 16})
        assert {s for s in before if before[s] != after[s]} == expected, stage


def test_lazy_imports_count_and_type_only_imports_and_annotations_do_not(tmp_path):
    root = tmp_path / "plad_core"
    files = {
        "stages/data.py": ("from __future__ import annotations\nfrom plad_core.models import Model\n"
                           "from plad_core import helper\n\n"
                           "def run_prepare_data(cfg: Model):\n    from plad_core.sampling import lazy\n"
                           "    return helper.f(), lazy.g()\n"),
        "models.py": "class Model: pass\n",
        "helper.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from plad_core import typed\n"
                     "def f():\n    return 1\n",
        "typed.py": "X = 1\n", "sampling/__init__.py": "from plad_core import unrelated\n",
        "sampling/lazy.py": "def g():\n    return 2\n", "unrelated.py": "Y = 1\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    assert code_version.stage_units("prepare_data", root) == {
        ("plad_core.stages.data", "run_prepare_data"), ("plad_core.helper", ""), ("plad_core.sampling.lazy", "")}


@pytest.mark.parametrize("stage", sorted(ALL))
def test_each_stage_reaches_its_runner_and_the_key_code_but_not_the_other_runners(stage):
    units = code_version.stage_units(stage)
    assert code_version.STAGE_RUNNERS[stage] in units
    assert {("plad_core.stages.keys", "materialize"), ("plad_core.stages.code_version", "stage_fingerprint")} <= units
    calls = {"evaluate": {"dev_outputs", "judgments"}}.get(stage, set())  # evaluate builds its outputs' artifacts
    others = {code_version.STAGE_RUNNERS[s] for s in ALL - {stage} - calls}
    assert not units & others
