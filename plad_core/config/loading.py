"""Loading: the schema, the YAML chain of a named config and dotlist overrides, merged strictly."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from plad_core.config.checks import validate
from plad_core.config.schema import CONF_DIR, ConfigError, PladConfig


def _valid_keys(schema_cls: Any, dotted: str) -> list[str]:
    """Valid child keys of the node at ``dotted`` (the unknown key's parent) in the schema."""
    cls = schema_cls
    for part in [p for p in dotted.split(".") if p]:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            break
        default = fields[part].default_factory() if fields[part].default_factory is not dataclasses.MISSING else None
        if not dataclasses.is_dataclass(default):
            break
        cls = type(default)
    return sorted(f.name for f in dataclasses.fields(cls))


def _merge(base: DictConfig, layer: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)
    except (ConfigKeyError, ConfigAttributeError) as err:
        full_key = err.full_key or str(err.key)
        parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
        valid = ", ".join(_valid_keys(PladConfig, parent))
        where = f"under '{parent}'" if parent else "at the top level"
        raise ConfigError(f"{source}: unknown config key '{full_key}'; valid keys {where}: {valid}") from None
    except ValidationError as err:
        raise ConfigError(f"{source}: bad value for '{err.full_key}': {err.msg}") from None


def _yaml_chain(name_or_path: str) -> list[tuple[str, DictConfig]]:
    """The YAML files from the root ancestor down to ``name_or_path``, following ``extends``."""
    chain: list[tuple[str, DictConfig]] = []
    seen: set[Path] = set()
    current: Optional[str] = name_or_path
    while current:
        path = Path(current) if current.endswith((".yaml", ".yml")) else CONF_DIR / f"{current}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in CONF_DIR.glob("*.yaml")))
            raise ConfigError(f"config '{current}' not found at {path}; known configs: {known}")
        if path.resolve() in seen:
            raise ConfigError(f"{path}: 'extends' forms a cycle")
        seen.add(path.resolve())
        layer = OmegaConf.load(path)
        current = layer.pop("extends", None)
        chain.append((str(path), layer))
    return list(reversed(chain))


def load_config(name: str = "base", overrides: Optional[list[str]] = None) -> DictConfig:
    """Merge schema defaults, the named config's YAML chain and dotlist overrides, strictly.

    ``name`` is a file stem under ``conf/`` (``demo``) or a path to a YAML file. The result is a
    read-only DictConfig; ``OmegaConf.to_yaml`` shows it.
    """
    cfg = OmegaConf.structured(PladConfig)
    layers = _yaml_chain(name)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        try:
            layers.append((f"override '{item}'", OmegaConf.from_dotlist([item])))
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{item}': the value is not valid YAML ({err.problem}); quote it") from None
    for source, layer in layers:
        cfg = _merge(cfg, layer, source)
    validate(cfg, layers)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def config_slice(cfg: DictConfig, paths: list[str]) -> dict[str, Any]:
    """The resolved values at ``paths``: the part of the config one stage reads (its cache key)."""
    out: dict[str, Any] = {}
    for path in paths:
        node = OmegaConf.select(cfg, path, throw_on_missing=True)
        out[path] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return out
