"""Typed, strict pipeline configuration.

The schema is a tree of dataclasses turned into an OmegaConf structured config, so an unknown or
mistyped key is an error, never a silent default. Configs are layered:

    schema defaults  <-  conf/base.yaml  <-  conf/<name>.yaml (and what it `extends`)  <-  dotlist overrides

A YAML file may name its parent with a top-level ``extends: <name>``. Overrides are OmegaConf
dotlists (``train.beta=0.5``), the same on the CLI and as Prefect flow parameters.
Every default is justified where it is set, in ``conf/base.yaml``; the schema's defaults equal it
(tests/test_config.py), so a config built in Python runs on the same values.

Values are strict too: a field's metadata holds its ``choices`` (a list field: each element), its
range (``ge``, ``gt``, ``le``, ``lt``; ``exclude``), or a ``pattern`` (regex, description), and
``validate`` checks every one, and every prompt template's fields, when the config loads. Leaves
stay plain ``str``/``int``/``float``, so artifact keys (hashes of ``config_slice``) do not change.
"""

from __future__ import annotations

import dataclasses
import operator
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from plad_core.data import TASKS

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _f(default: Any, **checks: Any) -> Any:
    """A field with its checks as metadata; a callable default is a factory (lists)."""
    return field(default_factory=default, metadata=checks) if callable(default) else field(default=default, metadata=checks)


SEED = {"ge": 0}
PROBABILITY = {"gt": 0, "le": 1}
NON_EMPTY = (r"(?s).+", "a non-empty string")
DTYPES = ("auto", "float32", "bfloat16", "float16")  # plad_core.models.DTYPES, and auto (by hardware)
SCHEDULES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
             "inverse_sqrt")  # transformers.get_scheduler names that need no extra arguments
LOSSES = ("ranking", "margin", "simpo", "cpo_hinge", "dpo", "ipo", "dpkd", "seqkd", "token_kd")
SYSTEMS = ("teacher", "sft", "plad")
JUDGE_CANDIDATES = ("output_a", "output_b")  # the judge prompt's fields besides the task's


@dataclass
class DataConfig:
    task: str = _f("tldr", choices=tuple(TASKS))
    path: str = "../shared/data/tldr/validation.jsonl"
    format: str = _f("auto", choices=("auto", "jsonl", "parquet"))
    n_labeled: int = _f(512, ge=0)
    n_unlabeled: int = _f(1024, ge=0)
    n_dev: int = _f(256, ge=0)
    split_salt: str = "plad-v1"


@dataclass
class PromptConfig:
    template: str = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
    fewshot_k: int = _f(0, ge=0)
    fewshot_separator: str = "\n\n###\n\n"
    max_tokens: int = _f(448, ge=1)


@dataclass
class ApiConfig:
    """An OpenAI-compatible endpoint, for ``sampling.backend=openai`` (``plad_core.sampling.openai_api``)."""
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    mode: str = _f("completions", choices=("completions", "chat"))
    concurrency: int = _f(8, ge=1)
    max_retries: int = _f(5, ge=0)
    timeout_s: float = _f(60.0, gt=0)
    backoff_base_s: float = _f(0.5, ge=0)
    backoff_max_s: float = _f(20.0, ge=0)


@dataclass
class SamplingConfig:
    backend: str = _f("auto", choices=("auto", "hf", "vllm", "openai"))
    n: int = _f(1, ge=1)
    temperature: float = _f(0.7, ge=0)
    top_p: float = _f(0.95, **PROBABILITY)
    max_new_tokens: int = _f(48, ge=1)
    batch_size: int = _f(16, ge=1)
    shard_size: int = _f(64, ge=1)
    seed: int = _f(0, **SEED)
    stop: list[str] = _f(lambda: ["\n"], pattern=NON_EMPTY)
    dtype: str = _f("bfloat16", choices=DTYPES)
    compile: str = _f("auto", choices=("auto", "true", "false"), ignore_case=True)  # YAML true arrives as "True"
    api: ApiConfig = field(default_factory=ApiConfig)


@dataclass
class StudentSamplingConfig(SamplingConfig):
    """The student is the pipeline's own artifact, sampled in this process: no openai backend."""
    backend: str = _f("auto", choices=("auto", "hf", "vllm"))
    seed: int = _f(1, **SEED)


@dataclass
class TeacherConfig:
    model: str = "embedded:smollm2-135m-instruct"
    revision: Optional[str] = None
    trust_remote_code: bool = False
    use_safetensors: bool = True
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(fewshot_k=2, max_tokens=768))
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass
class OptimConfig:
    """``train.optim``'s defaults; ``sft`` changes lr and batch_size (``PladConfig``)."""
    lr: float = _f(1e-5, gt=0)
    weight_decay: float = _f(0.0, ge=0)
    warmup_steps: int = _f(0, ge=0)
    schedule: str = _f("cosine", choices=SCHEDULES)
    grad_clip: float = _f(1.0, ge=0)
    batch_size: int = _f(4, ge=1)
    grad_accum: int = _f(1, ge=1)
    epochs: int = _f(1, ge=1)
    max_steps: int = _f(0, ge=0)
    max_seq_len: int = _f(512, ge=1)
    bf16: bool = False
    seed: int = _f(0, **SEED)
    gradient_checkpointing: bool = False
    checkpoint_every: int = _f(25, ge=0)


@dataclass
class HealConfig:
    steps: int = _f(32, ge=0)
    batch_size: int = _f(4, ge=1)
    seq_len: int = _f(256, ge=1)
    lr: float = _f(1e-3, gt=0)
    temperature: float = _f(1.0, gt=0)
    bf16: bool = True
    seed: int = _f(0, **SEED)
    checkpoint_every: int = _f(25, ge=0)


@dataclass
class StudentConfig:
    model: Optional[str] = None
    keep_layers: list[int] = _f(lambda: [0, 1, 2, 3, 26, 27, 28, 29], ge=0)
    heal: HealConfig = field(default_factory=HealConfig)
    revision: Optional[str] = None
    trust_remote_code: bool = False
    use_safetensors: bool = True
    prompt: PromptConfig = field(default_factory=PromptConfig)
    sampling: StudentSamplingConfig = field(default_factory=StudentSamplingConfig)


@dataclass
class PairsConfig:
    min_chars: int = _f(1, ge=0)
    unlabeled_fraction: float = _f(1.0, **PROBABILITY)


@dataclass
class LaunchConfig:
    """How calibration runs: in this process, or under ``torchrun`` (``plad_core.training.torchrun``)."""
    nproc: int = _f(1, ge=1)
    strategy: str = _f("ddp", choices=("ddp", "fsdp"))
    timeout_s: float = _f(0.0, ge=0)
    private_network: bool = True


@dataclass
class TrainConfig:
    loss: str = _f("ranking", choices=LOSSES)
    beta: float = _f(1.0, ge=0)
    gamma: float = _f(0.5, ge=0)
    nll_weight: float = _f(0.0, ge=0)
    kd_divergence: str = _f("forward_kl", choices=("forward_kl", "jsd"))
    pair_forward: str = _f("shared_prefix", choices=("shared_prefix", "concatenated"))
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval_fraction: float = _f(0.1, ge=0, le=1)
    eval_max_pairs: int = _f(64, ge=0)
    eval_every: int = _f(25, ge=1)
    best_metric: str = _f("eval_loss", choices=("eval_loss", "eval_pair_accuracy", "eval_margin"))
    best_mode: str = _f("min", choices=("min", "max"))
    keep: str = _f("last", choices=("last", "best"))
    launch: LaunchConfig = field(default_factory=LaunchConfig)


@dataclass
class JudgeConfig:
    """The pairwise judge of the evaluation (``plad_core.evaluation.judge``)."""
    enabled: bool = True
    backend: str = _f("hf", choices=("hf", "openai"))
    model: str = "${teacher.model}"
    prompt: str = "judge/tldr.txt"
    max_tokens: int = _f(512, ge=1)
    rows: int = _f(0, ge=0)
    api: ApiConfig = field(default_factory=lambda: ApiConfig(mode="chat"))


@dataclass
class EvalConfig:
    max_new_tokens: int = _f(48, ge=1)
    batch_size: int = _f(16, ge=1)
    stop: list[str] = _f(lambda: ["\n"], pattern=NON_EMPTY)
    rouge_stemmer: bool = True
    dtype: str = _f("bfloat16", choices=DTYPES)
    systems: list[str] = _f(lambda: list(SYSTEMS), choices=SYSTEMS)
    n_resamples: int = _f(1000, ge=1)
    seed: int = _f(0, **SEED)
    calibration_samples: int = _f(4, ge=0, exclude=(1,))  # 0 (off) or K >= 2 samples to rank
    calibration_rows: int = _f(0, ge=0)
    calibration_temperature: float = _f(0.7, gt=0)
    calibration_top_p: float = _f(0.95, **PROBABILITY)
    calibration_bins: int = _f(10, ge=1)
    length_buckets: list[int] = _f(list, ge=1)
    report_examples: int = _f(3, ge=0)
    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass
class PromotionConfig:
    enabled: bool = True
    metric: str = _f("rougeL", choices=("rouge1", "rouge2", "rougeL"))
    registry: Optional[str] = None
    n_resamples: int = _f(1000, ge=1)
    seed: int = _f(0, **SEED)


@dataclass
class RunnerConfig:
    """Where the flow runs sampling shards: in its own process, or as Prefect tasks on a Dask cluster."""
    kind: str = _f("local", choices=("local", "dask"))
    address: Optional[str] = None
    workers: int = _f(2, ge=1)
    torch_threads: int = _f(1, ge=0)  # 0: torch's default


@dataclass
class PladConfig:
    name: str = "base"
    artifacts_root: str = "data/artifacts"
    cache_dir: str = "data/cache"
    threads: int = _f(0, ge=0)
    device: str = _f("auto", pattern=(r"auto|cpu|mps|(cuda|xpu)(:\d+)?", "auto, cpu, mps, cuda[:N] or xpu[:N]"))
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    sft: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, batch_size=8))
    pairs: PairsConfig = field(default_factory=PairsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)


_BOUNDS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="), "lt": (operator.lt, "<")}


def _problem(value: Any, checks: dict[str, Any]) -> Optional[str]:
    """What is wrong with one leaf ``value`` by its field's ``checks``; None when nothing is."""
    if "choices" in checks and (str(value).lower() if checks.get("ignore_case") else value) not in checks["choices"]:
        return f"is not one of: {', '.join(map(str, checks['choices']))}"
    if "pattern" in checks and not re.fullmatch(checks["pattern"][0], str(value)):
        return f"is not {checks['pattern'][1]}"
    bounds = [(op, sym, checks[k]) for k, (op, sym) in _BOUNDS.items() if k in checks]
    if any(not op(value, b) for op, _, b in bounds) or value in checks.get("exclude", ()):
        return ("is out of range: must be " + " and ".join(f"{sym} {b}" for _, sym, b in bounds)
                + "".join(f", not {x}" for x in checks.get("exclude", ())))
    return None


def _leaf_problems(node: DictConfig, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(path, message) for every leaf under ``node`` that fails its field's checks (lists element-wise)."""
    for f in dataclasses.fields(OmegaConf.get_type(node)):
        path, value = prefix + f.name, node[f.name]
        if isinstance(value, DictConfig):
            yield from _leaf_problems(value, path + ".")
        elif f.metadata and value is not None:
            items = enumerate(value) if isinstance(value, ListConfig) else [(None, value)]
            for i, item in items:
                problem = _problem(item, f.metadata)
                if problem:
                    yield path, f"{path if i is None else f'{path}[{i}]'}={item!r} {problem}"


def template_problem(template: str, fields: Sequence[str]) -> Optional[str]:
    """What is wrong with a ``str.format`` template whose rows hold ``fields``; None when nothing is."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        return f"is not a valid format template ({err}); write literal braces as {{{{ }}}}"
    unknown = sorted({re.split(r"[.\[]", name)[0] for name in names} - set(fields))
    return f"uses unknown field(s) {unknown}; valid fields: {', '.join(fields)}" if unknown else None


def _template_problems(cfg: DictConfig) -> Iterator[tuple[str, str]]:
    fields = TASKS[cfg.data.task].fields
    for side in ("teacher", "student"):
        problem = template_problem(cfg[side].prompt.template, fields)
        if problem:
            yield f"{side}.prompt.template", f"{side}.prompt.template {problem} (data.task={cfg.data.task})"
    if cfg.eval.judge.enabled:
        path = CONF_DIR / cfg.eval.judge.prompt  # an absolute prompt path stays itself
        problem = (template_problem(path.read_text(encoding="utf-8"), (*fields, *JUDGE_CANDIDATES)) if path.is_file()
                   else f"is not a file ({path}; judge prompts live in conf/judge/)")
        if problem:
            yield "eval.judge.prompt", f"eval.judge.prompt={cfg.eval.judge.prompt!r} {problem} (data.task={cfg.data.task})"


def validate(cfg: DictConfig, layers: Sequence[tuple[str, Any]] = ()) -> None:
    """Check every leaf with choices or a range, and the prompt templates' fields; a ConfigError lists
    each problem, with the last of ``layers`` ((source, layer) pairs, in merge order) that set it."""
    problems = [*_leaf_problems(cfg), *(_template_problems(cfg) if cfg.data.task in TASKS else ())]
    if problems:
        def source(path: str) -> str:
            found = [src for src, layer in layers if OmegaConf.select(layer, path, default=None) is not None]
            return found[-1] if found else "schema default"
        raise ConfigError("invalid config value(s):\n" + "\n".join(f"  {source(p)}: {msg}" for p, msg in problems))


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
