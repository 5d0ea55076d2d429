"""plad_core is layered: each layer imports only the layers below it, nothing imports in a circle,
and the library never imports Prefect, ``tasks`` or ``flows``.

Read from the source with ``ast`` (every import statement, at module level or inside a function),
so a lazy import counts as much as one at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top; a module may import any module of a lower layer, and within its own layer only
# modules of its own package (the foundations are one package for this purpose).
LAYERS: list[set[str]] = [
    {"__init__", "config", "artifacts", "data", "models", "stats", "rouge", "progress", "registry", "pairs", "text_stats"},
    {"losses", "sampling"},
    {"training"},
    {"evaluation"},
    {"report"},
    {"stages"},
    {"experiments"},
]
FORBIDDEN = ("prefect", "tasks", "flows")


def module_name(path: Path, package_root: Path) -> str:
    parts = list(path.relative_to(package_root.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(tree: ast.AST, name: str, is_package: bool, known: set[str]) -> list[tuple[int, str]]:
    """(line, imported module) for every import in ``tree``; ``from a import b`` counts ``a.b`` when that is a module."""
    found = []
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if f"{base}.{alias.name}" in known]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
            elif node.args and isinstance(node.args[0], ast.JoinedStr):
                head = node.args[0].values[0]
                if isinstance(head, ast.Constant):
                    found.append((node.lineno, str(head.value).rstrip(".")))
    return found


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, package) of a ``plad_core`` module; KeyError for a module in no layer."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index, ("foundations" if index == 0 else top)
    raise KeyError(module)


def violations(package_root: Path) -> list[str]:
    """Every upward or sideways import, cycle, unplaced module and forbidden import under ``package_root``."""
    files = {module_name(p, package_root): p for p in sorted(package_root.rglob("*.py"))}
    known = set(files)
    graph: dict[str, set[str]] = {name: set() for name in files}
    problems = []
    for name, path in files.items():
        where = path.relative_to(package_root.parent)
        try:
            own_layer, own_package = layer_of(name)
        except KeyError:
            problems.append(f"{where}: module {name} is in no layer")
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, target in imported_modules(tree, name, path.name == "__init__.py", known):
            if target.split(".")[0] in FORBIDDEN:
                problems.append(f"{where}:{line}: imports {target}")
            if not target.startswith("plad_core.") or target not in known or target == name:
                continue
            graph[name].add(target)
            try:
                layer, package = layer_of(target)
            except KeyError:
                continue
            if layer > own_layer or (layer == own_layer and package != own_package):
                problems.append(f"{where}:{line}: {name} (layer {own_layer}) imports {target} (layer {layer})")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            # A package imports its own submodules through __init__; that edge is not a cycle.
            if nxt.startswith(node + "."):
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_plad_core_imports_only_downward_without_cycles_or_prefect():
    assert violations(ROOT / "plad_core") == []


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "plad_core" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "plad_core"


@pytest.mark.parametrize("files, expected", [
    ({"training/loop.py": "from plad_core.stages import dag\n", "stages/dag.py": ""},
     "plad_core/training/loop.py:1: plad_core.training.loop (layer 2) imports plad_core.stages.dag (layer 5)"),
    ({"losses/core.py": "def f():\n    from plad_core.sampling import hf\n", "sampling/hf.py": ""},
     "plad_core/losses/core.py:2: plad_core.losses.core (layer 1) imports plad_core.sampling.hf (layer 1)"),
    ({"config.py": "import prefect\n"}, "plad_core/config.py:1: imports prefect"),
    ({"data.py": "import importlib\nimportlib.import_module(f'flows.{x}')\n"}, "plad_core/data.py:2: imports flows"),
    ({"widgets.py": ""}, "plad_core/widgets.py: module plad_core.widgets is in no layer"),
    ({"models.py": "from plad_core import data\n", "data.py": "from plad_core.models import load\n"},
     "import cycle: plad_core.data -> plad_core.models"),
])
def test_the_check_reports_each_kind_of_breach(tmp_path, files, expected):
    assert expected in violations(write(tmp_path, files))


def test_downward_imports_and_a_package_importing_its_own_modules_pass(tmp_path):
    root = write(tmp_path, {
        "stages/__init__.py": "from plad_core.stages.dag import STAGES\n",
        "stages/dag.py": "from plad_core import models\nfrom plad_core.training import loop\nSTAGES = {}\n",
        "training/loop.py": "from plad_core.losses import core\n", "losses/core.py": "",
        "models.py": "from plad_core.config import load\n", "config.py": "",
    })
    assert violations(root) == []


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 300, 60


def oversized(roots: list[Path]) -> list[str]:
    """Every module over MAX_MODULE_LINES lines and function over MAX_FUNCTION_LINES under ``roots``."""
    found = []
    for path in sorted(p for root in roots for p in root.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            found.append(f"{path.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path.name}:{node.name}: {length} lines")
    return found


def test_modules_and_functions_stay_small():
    assert oversized([ROOT / d for d in ("plad_core", "flows", "tasks", "bench")]) == []


def test_the_size_check_reports_a_long_module_and_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    (tmp_path / "long.py").write_text(f"def f():\n{body}\n" + "\n" * 240)
    assert oversized([tmp_path]) == ["long.py: 302 lines", "long.py:f: 62 lines"]
