"""Code fingerprints: the part of an artifact key that follows the code producing the artifact.

A stage's fingerprint is a sha256 over the normalised syntax tree (``ast.dump``: no comments, no
line numbers, docstrings removed) of the code its runner can reach, so editing sampling code
re-samples and editing a docstring or a comment rebuilds nothing. What a runner reaches:

- In ``plad_core.stages`` (several stages share a module, and ``keys`` serves every stage) the
  unit is a top-level definition: the runner function, then every top-level function, class or
  constant of a stages module that a reached definition names, through its module's imports or a
  lazy import inside it. Names used only in annotations do not count (they are never evaluated).
- Below ``stages`` the unit is a whole module, with every ``plad_core`` module it imports, at the
  top or inside a function, transitively; ``from a import b`` counts the module ``a.b`` when
  there is one (not ``a``'s ``__init__``), and imports under ``if TYPE_CHECKING:`` do not count.

So ``evaluate`` follows the report code and ``dev_outputs`` does not; every stage follows
``config`` and the foundations it imports (a change there rebuilds what uses it).
"""

from __future__ import annotations

import ast
import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
FINE_PACKAGE = "plad_core.stages"

# stage -> (module, function) of its runner; tests/stages/test_dag.py holds this to dag.STAGES.
STAGE_RUNNERS: dict[str, tuple[str, str]] = {
    "prepare_data": ("plad_core.stages.data", "run_prepare_data"),
    "init_student": ("plad_core.stages.student", "run_init_student"),
    "sft_student": ("plad_core.stages.student", "run_sft_student"),
    "sft_teacher": ("plad_core.stages.teacher", "run_sft_teacher"),
    "sample_teacher": ("plad_core.stages.sampling", "run_sample_teacher"),
    "sample_student": ("plad_core.stages.sampling", "run_sample_student"),
    "build_pairs": ("plad_core.stages.pairs", "run_build_pairs"),
    "curate_pairs": ("plad_core.stages.curate", "run_curate_pairs"),
    "score_pairs": ("plad_core.stages.pairs", "run_score_pairs"),
    "calibrate": ("plad_core.stages.calibrate", "run_calibrate"),
    "evaluate": ("plad_core.stages.evaluate", "run_evaluate"),
    "dev_outputs": ("plad_core.stages.evaluate", "run_dev_outputs"),
    "judgments": ("plad_core.stages.evaluate", "run_judgments"),
}

Unit = tuple[str, str]  # (module, top-level name), or (module, "") for a whole module


@dataclass
class _Module:
    name: str
    tree: ast.Module
    defs: dict[str, ast.AST] = field(default_factory=dict)      # top-level name -> its statement
    bindings: dict[str, Unit] = field(default_factory=dict)     # module-level import name -> what it binds
    is_package: bool = False


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (getattr(test, "id", None) == "TYPE_CHECKING"
                                         or getattr(test, "attr", None) == "TYPE_CHECKING")


def _nodes(node: ast.AST, skip_annotations: bool = False):
    """``ast.walk`` without ``if TYPE_CHECKING:`` blocks (and, if asked, annotations)."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        for name, value in ast.iter_fields(current):
            if skip_annotations and name in ("annotation", "returns"):
                continue
            if _is_type_checking(current) and name == "body":
                continue
            children = value if isinstance(value, list) else [value]
            stack.extend(c for c in children if isinstance(c, ast.AST))


class _Package:
    """The parsed ``plad_core`` tree under ``root``, and the closure of any unit in it."""

    def __init__(self, root: Path):
        files = {self._module_name(p, root): p for p in sorted(root.rglob("*.py"))}
        self.modules: dict[str, _Module] = {}
        self._deps_cache: dict[Unit, set[Unit]] = {}
        for name, path in files.items():
            tree = _strip_docstrings(ast.parse(path.read_text(), filename=str(path)))
            self.modules[name] = _Module(name, tree)
        for name, path in files.items():
            self._index(self.modules[name], path.name == "__init__.py")

    @staticmethod
    def _module_name(path: Path, root: Path) -> str:
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)

    def _imports(self, node: ast.AST, module: str, is_package: bool) -> dict[str, Unit]:
        """What each import statement under ``node`` binds: a name -> (module, attribute or "")."""
        bound: dict[str, Unit] = {}
        package = module if is_package else module.rpartition(".")[0]
        for n in _nodes(node):
            if isinstance(n, ast.Import):
                bound.update({a.asname or a.name: (a.name, "") for a in n.names})
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    anchor = package.split(".")[: len(package.split(".")) - (n.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                for a in n.names:
                    full = f"{base}.{a.name}"
                    bound[a.asname or a.name] = (full, "") if full in self.modules else (base, a.name)
        return {k: v for k, v in bound.items() if v[0] in self.modules}

    def _index(self, m: _Module, is_package: bool) -> None:
        m.is_package = is_package
        top = [s for s in m.tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))]
        for statement in top:
            for n in ([statement] if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                      else _nodes(statement)):
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    m.defs.setdefault(n.name, n)
                elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                    m.defs.setdefault(n.id, statement)
        top_imports = ast.Module(body=[s for s in m.tree.body if isinstance(s, (ast.Import, ast.ImportFrom))],
                                 type_ignores=[])
        m.bindings = self._imports(top_imports, m.name, is_package)

    def _resolve(self, target: Unit) -> Unit:
        """A bound (module, name) as a unit: a definition in a stages module, else the whole module."""
        module, name = target
        m = self.modules[module]
        if not module.startswith(FINE_PACKAGE) or not name:
            return (module, "")
        if name in m.defs:
            return (module, name)
        if name in m.bindings:  # a re-export
            return self._resolve(m.bindings[name])
        return (module, "")

    def _deps(self, unit: Unit) -> set[Unit]:
        if unit not in self._deps_cache:
            self._deps_cache[unit] = self._find_deps(unit)
        return self._deps_cache[unit]

    def _find_deps(self, unit: Unit) -> set[Unit]:
        module, name = unit
        m = self.modules[module]
        if not name:  # a whole module: everything it imports, anywhere in it
            return {self._resolve(t) for t in self._imports(m.tree, module, m.is_package).values()}
        node = m.defs[name]
        local = self._imports(node, module, m.is_package)
        found: set[Unit] = {self._resolve(t) for t in local.values()}
        seen_as_attribute: set[int] = set()
        for n in _nodes(node, skip_annotations=True):
            # ``keys.materialize`` with ``keys`` a stages module: that definition, not the whole module
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name):
                bound = m.bindings.get(n.value.id)
                if bound and not bound[1] and bound[0].startswith(FINE_PACKAGE):
                    found.add(self._resolve((bound[0], n.attr)))
                    seen_as_attribute.add(id(n.value))
        for n in _nodes(node, skip_annotations=True):
            if not isinstance(n, ast.Name) or id(n) in seen_as_attribute:
                continue
            if n.id in m.defs and n.id != name:
                found.add((module, n.id))
            elif n.id in m.bindings:
                found.add(self._resolve(m.bindings[n.id]))
        return found

    def closure(self, unit: Unit) -> set[Unit]:
        seen, todo = set(), [unit]
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(self._deps(current) - seen)
        return seen

    def text(self, unit: Unit) -> str:
        module, name = unit
        return ast.dump(self.modules[module].tree if not name else self.modules[module].defs[name])


@functools.lru_cache(maxsize=None)
def _package(root: Path) -> _Package:
    return _Package(root)


def stage_units(stage: str, root: Path = PACKAGE_ROOT) -> set[Unit]:
    """The definitions and modules whose code makes ``stage``'s output."""
    return _package(root).closure(STAGE_RUNNERS[stage])


def _digest(units: set[Unit], root: Path) -> str:
    package = _package(root)
    digest = hashlib.sha256()
    for unit in sorted(units):
        digest.update(f"{unit[0]}:{unit[1]}\n{package.text(unit)}\n".encode())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def stage_fingerprint(stage: str, root: Path = PACKAGE_ROOT) -> str:
    """16 hex chars of sha256 over the normalised code of ``stage_units(stage)`` (once per process)."""
    return _digest(stage_units(stage, root), root)


@functools.lru_cache(maxsize=None)
def module_fingerprint(module: str, root: Path = PACKAGE_ROOT) -> str:
    """The same over a whole module and what it reaches (an experiment's artifact: ``plad_core.experiments``)."""
    return _digest(_package(root).closure((module, "")), root)
