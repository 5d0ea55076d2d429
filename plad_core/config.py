"""Typed, strict pipeline configuration.

The schema is a tree of dataclasses turned into an OmegaConf structured config, so an unknown or
mistyped key is an error, never a silent default. Configs are layered:

    schema defaults  <-  conf/base.yaml  <-  conf/<name>.yaml (and what it `extends`)  <-  dotlist overrides

A YAML file may name its parent with a top-level ``extends: <name>``. Overrides are OmegaConf
dotlists (``train.beta=0.5``), the same on the CLI and as Prefect flow parameters.
Every default is justified where it is set, in ``conf/base.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass
class DataConfig:
    task: str = "tldr"
    path: str = "../shared/data/tldr/validation.jsonl"
    format: str = "auto"
    n_labeled: int = 256
    n_unlabeled: int = 256
    n_dev: int = 64
    split_salt: str = "plad-v1"


@dataclass
class PromptConfig:
    template: str = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
    fewshot_k: int = 0
    fewshot_separator: str = "\n\n###\n\n"
    max_tokens: int = 448


@dataclass
class ApiConfig:
    """An OpenAI-compatible endpoint, for ``sampling.backend=openai`` (``plad_core.sampling.openai_api``)."""
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    mode: str = "completions"
    concurrency: int = 8
    max_retries: int = 5
    timeout_s: float = 60.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0


@dataclass
class SamplingConfig:
    backend: str = "auto"
    n: int = 1
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 48
    batch_size: int = 16
    shard_size: int = 64
    seed: int = 0
    stop: list[str] = field(default_factory=lambda: ["\n"])
    dtype: str = "bfloat16"
    compile: str = "auto"
    api: ApiConfig = field(default_factory=ApiConfig)


@dataclass
class TeacherConfig:
    model: str = "embedded:smollm2-135m-instruct"
    revision: Optional[str] = None
    trust_remote_code: bool = False
    use_safetensors: bool = True
    prompt: PromptConfig = field(default_factory=PromptConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"
    grad_clip: float = 1.0
    batch_size: int = 4
    grad_accum: int = 1
    epochs: int = 1
    max_steps: int = 0
    max_seq_len: int = 512
    bf16: bool = False
    seed: int = 0
    gradient_checkpointing: bool = False
    checkpoint_every: int = 25


@dataclass
class HealConfig:
    steps: int = 32
    batch_size: int = 4
    seq_len: int = 384
    lr: float = 1e-3
    temperature: float = 1.0
    bf16: bool = True
    seed: int = 0
    checkpoint_every: int = 25


@dataclass
class StudentConfig:
    model: Optional[str] = None
    keep_layers: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 26, 27, 28, 29])
    heal: HealConfig = field(default_factory=HealConfig)
    revision: Optional[str] = None
    trust_remote_code: bool = False
    use_safetensors: bool = True
    prompt: PromptConfig = field(default_factory=PromptConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass
class PairsConfig:
    min_chars: int = 1
    unlabeled_fraction: float = 1.0


@dataclass
class LaunchConfig:
    """How calibration runs: in this process, or under ``torchrun`` (``plad_core.training.torchrun``)."""
    nproc: int = 1
    strategy: str = "ddp"
    timeout_s: float = 0.0
    private_network: bool = True


@dataclass
class TrainConfig:
    loss: str = "ranking"
    beta: float = 1.0
    gamma: float = 0.5
    nll_weight: float = 0.0
    kd_divergence: str = "forward_kl"
    pair_forward: str = "shared_prefix"
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval_fraction: float = 0.1
    eval_max_pairs: int = 64
    eval_every: int = 25
    best_metric: str = "eval_loss"
    best_mode: str = "min"
    keep: str = "last"
    launch: LaunchConfig = field(default_factory=LaunchConfig)


@dataclass
class JudgeConfig:
    """The pairwise judge of the evaluation (``plad_core.evaluation.judge``)."""
    enabled: bool = True
    backend: str = "hf"
    model: str = "${teacher.model}"
    prompt: str = "judge/tldr.txt"
    max_tokens: int = 512
    rows: int = 0
    api: ApiConfig = field(default_factory=lambda: ApiConfig(mode="chat"))


@dataclass
class EvalConfig:
    max_new_tokens: int = 48
    batch_size: int = 16
    stop: list[str] = field(default_factory=lambda: ["\n"])
    rouge_stemmer: bool = True
    dtype: str = "bfloat16"
    systems: list[str] = field(default_factory=lambda: ["teacher", "sft", "plad"])
    n_resamples: int = 1000
    seed: int = 0
    calibration_samples: int = 4
    calibration_rows: int = 0
    calibration_temperature: float = 0.7
    calibration_top_p: float = 0.95
    calibration_bins: int = 10
    length_buckets: list[int] = field(default_factory=list)
    report_examples: int = 3
    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass
class PromotionConfig:
    enabled: bool = True
    metric: str = "rougeL"
    registry: Optional[str] = None
    n_resamples: int = 1000
    seed: int = 0


@dataclass
class RunnerConfig:
    """Where the flow runs sampling shards: in its own process, or as Prefect tasks on a Dask cluster."""
    kind: str = "local"
    address: Optional[str] = None
    workers: int = 2
    torch_threads: int = 1


@dataclass
class PladConfig:
    name: str = "base"
    artifacts_root: str = "data/artifacts"
    cache_dir: str = "data/cache"
    threads: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    sft: OptimConfig = field(default_factory=OptimConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)


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
    for source, layer in _yaml_chain(name):
        cfg = _merge(cfg, layer, source)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        cfg = _merge(cfg, OmegaConf.from_dotlist([item]), f"override '{item}'")
    OmegaConf.set_readonly(cfg, True)
    return cfg


def config_slice(cfg: DictConfig, paths: list[str]) -> dict[str, Any]:
    """The resolved values at ``paths``: the part of the config one stage reads (its cache key)."""
    out: dict[str, Any] = {}
    for path in paths:
        node = OmegaConf.select(cfg, path, throw_on_missing=True)
        out[path] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return out
