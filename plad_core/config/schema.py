"""The configuration schema: a tree of dataclasses, each field with its default (equal to
conf/base.yaml's, where it is justified) and, as metadata, its ``choices``, range or ``pattern``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from plad_core.data import TASKS

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _f(default: Any, **checks: Any) -> Any:
    """A field with its checks as metadata; a callable default is a factory (lists)."""
    return field(default_factory=default, metadata=checks) if callable(default) else field(default=default, metadata=checks)


SEED = {"ge": 0}
PROBABILITY = {"gt": 0, "le": 1}
NON_EMPTY = (r"(?s).+", "a non-empty string")
DTYPES = ("auto", "float32", "bfloat16", "float16")  # plad_core.models.DTYPES, and auto (by hardware)
BF16 = ("auto", True, False)  # bf16 autocast; auto: where bf16 is fast (plad_core.models.fast_bf16)
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
    api_key_env: str = ""
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
    dtype: str = _f("auto", choices=DTYPES)
    compile: str = _f("auto", choices=("auto", "true", "false"), ignore_case=True)  # YAML true arrives as "True"
    api: ApiConfig = field(default_factory=ApiConfig)


@dataclass
class StudentSamplingConfig(SamplingConfig):
    """The student is the pipeline's own artifact, sampled in this process: no openai backend."""
    backend: str = _f("auto", choices=("auto", "hf", "vllm"))
    seed: int = _f(1, **SEED)


@dataclass
class OptimConfig:
    """``train.optim``'s defaults; ``sft`` changes lr and batch_size (``PladConfig``), ``teacher.sft``
    lr, batch_size and max_seq_len (``TeacherSftConfig``)."""
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
    bf16: Any = _f("auto", choices=BF16)  # Any: YAML's true/false stay bools beside "auto"
    seed: int = _f(0, **SEED)
    gradient_checkpointing: bool = False
    checkpoint_every: int = _f(25, ge=0)


@dataclass
class TeacherSftConfig(OptimConfig):
    """``teacher.sft``: supervised fine-tuning of a local teacher on the labeled split before it is
    sampled (PLaD fine-tunes teacher and student on the labeled data first), with ``OptimConfig``'s
    trainer settings. ``enabled`` auto: on for a local teacher (backend auto, hf or vllm), off for an
    API teacher, used as is. ``held_out`` labeled rows (by a stable hash, never dev) are kept out of
    training and scored every ``eval_every`` steps; the step with the lowest held-out NLL of the
    references is the one kept (the paper picks by win rate against the references, which needs a
    judge the CPU setting does not have)."""
    enabled: Any = _f("auto", choices=("auto", True, False))  # Any: YAML's true/false stay bools
    held_out: int = _f(32, ge=0)
    eval_every: int = _f(10, ge=1)
    lr: float = _f(5e-5, gt=0)
    batch_size: int = _f(8, ge=1)
    max_seq_len: int = _f(832, ge=1)


@dataclass
class TeacherConfig:
    model: str = "embedded:smollm2-135m-instruct"
    revision: Optional[str] = None
    trust_remote_code: bool = False
    use_safetensors: bool = True
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(fewshot_k=2, max_tokens=768))
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    sft: TeacherSftConfig = field(default_factory=TeacherSftConfig)


@dataclass
class HealConfig:
    steps: int = _f(96, ge=0)
    batch_size: int = _f(4, ge=1)
    seq_len: int = _f(256, ge=1)
    lr: float = _f(1e-3, gt=0)
    temperature: float = _f(1.0, gt=0)
    bf16: Any = _f("auto", choices=BF16)
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
class CurateConfig:
    max_repeat_share: float = _f(0.2, ge=0, le=1)
    student_margin: Optional[float] = _f(None, ge=0)


@dataclass
class PairsConfig:
    min_chars: int = _f(1, ge=0)
    unlabeled_fraction: float = _f(1.0, **PROBABILITY)
    truncated: str = _f("drop", choices=("drop", "keep"))  # plad_core.pairs.TRUNCATED
    references: bool = False
    curate: CurateConfig = field(default_factory=CurateConfig)


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
    validity_rows: int = _f(0, ge=0)
    api: ApiConfig = field(default_factory=lambda: ApiConfig(mode="chat"))


@dataclass
class EvalConfig:
    max_new_tokens: int = _f(48, ge=1)
    batch_size: int = _f(16, ge=1)
    stop: list[str] = _f(lambda: ["\n"], pattern=NON_EMPTY)
    rouge_stemmer: bool = True
    dtype: str = _f("auto", choices=DTYPES)
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


