"""Experiment files (``conf/experiments/*.yaml``): found by name or path and read strictly into a schema
dataclass (``plad_core.scale.ScaleExperiment``, ``plad_core.table.TableExperiment``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

from plad_core.config import CONF_DIR, ConfigError

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
