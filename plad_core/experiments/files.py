"""Experiment files (``conf/experiments/*.yaml``): found by name or path and read strictly into a schema
dataclass (``plad_core.experiments.scale.ScaleExperiment``, ``plad_core.experiments.table.TableExperiment``);
and the commit of an experiment's own artifact: its report pages, summary.md and JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

from plad_core.artifacts import Artifact, ArtifactStore, artifact_key
from plad_core.config import CONF_DIR, ConfigError
from plad_core.report.blocks import Block, render_markdown, write_pages

T = TypeVar("T")
EXPERIMENTS_DIR = CONF_DIR / "experiments"


def experiment_path(name_or_path: str) -> Path:
    """A YAML path as given, or ``conf/experiments/<name>.yaml``; a clear error naming the known ones."""
    path = Path(name_or_path) if name_or_path.endswith((".yaml", ".yml")) else EXPERIMENTS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml")))
        raise ConfigError(f"experiment '{name_or_path}' not found at {path}; known experiments: {known}")
    return path


def load_experiment_file(schema: type[T], name_or_path: str) -> tuple[T, Path]:
    """The experiment file merged into ``schema`` (a dataclass): an unknown key, a value of the wrong
    type or a missing mandatory one fails with the file and the key. Returns (experiment, its path)."""
    path = experiment_path(name_or_path)
    try:
        merged: Any = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.load(path))
        return OmegaConf.to_object(merged), path
    except (ConfigKeyError, ValidationError, MissingMandatoryValue) as err:
        keys = ", ".join(f.name for f in dataclasses.fields(schema))  # type: ignore[arg-type]
        raise ConfigError(f"{path}: {err.msg} (at '{err.full_key}'; top-level keys: {keys})") from None


@dataclass
class ExperimentPages:
    """What an experiment artifact holds besides its manifest: the report (``title``, ``blocks``), the
    summary blocks (summary.md), one JSON file and the stats recorded in the manifest."""
    title: str
    blocks: list[Block]
    summary: list[Block]
    json_name: str
    json_text: str
    stats: dict[str, Any]


def commit_experiment(store: ArtifactStore, stage: str, code: str, config: dict[str, Any],
                      upstream: dict[str, str], render: Callable[[Path], ExperimentPages]) -> Artifact:
    """The experiment's artifact, reused from ``store`` or built: ``render(report_path)`` (called only
    when building; ``report_path`` is where the artifact's report.html will be) gives the pages, written
    as report.md, report.html, plots/, summary.md and the JSON file."""
    report_path = store.path(stage, artifact_key(stage, code, config, upstream)) / "report.html"

    def build(out: Path, work: Path) -> dict[str, Any]:
        pages = render(report_path)
        write_pages(out, pages.blocks, pages.title)
        (out / "summary.md").write_text(render_markdown(pages.summary))
        (out / pages.json_name).write_text(pages.json_text)
        return pages.stats

    return store.materialize(stage, code, config, upstream, build)
