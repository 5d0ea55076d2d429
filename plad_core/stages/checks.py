"""Fail-fast checks of settings that the loss and backend registries decide, run before any work."""

from __future__ import annotations

from omegaconf import DictConfig

from plad_core.config import ConfigError
from plad_core.losses import TEACHER_NEEDS, check_loss, text_only_losses
from plad_core.training.distributed import check_strategy
from plad_core.training.logprobs import check_pair_forward


def check_train_loss(cfg: DictConfig) -> None:
    """Fail fast on a ``train.loss`` this config cannot train: an unknown name (or ``train.kd_divergence``,
    ``train.pair_forward``, ``train.launch.strategy``), shared_prefix with gradient checkpointing, or dpkd /
    token_kd with a teacher behind an API, whose log-probs are not available."""
    loss, backend = cfg.train.loss, cfg.teacher.sampling.backend
    check_loss(loss, cfg.train.kd_divergence)
    check_strategy(cfg.train.launch.strategy)
    check_pair_forward(cfg.train.pair_forward, cfg.train.optim.gradient_checkpointing)
    if loss in TEACHER_NEEDS and backend == "openai":  # hf, vllm and auto sample a local teacher model
        raise ConfigError(f"train.loss={loss} needs the teacher's {TEACHER_NEEDS[loss]}, but "
                         f"teacher.sampling.backend={backend} gives only its text: set teacher.sampling.backend=hf "
                         f"with teacher.model a local or hub model that shares the student's tokenizer, or choose a "
                         f"loss that needs only the teacher's text ({text_only_losses()})")


def check_unlabeled_fraction(fraction: float) -> None:
    if not 0 < fraction <= 1:
        raise ConfigError(f"pairs.unlabeled_fraction={fraction} must be in (0, 1]")


def calibration_k(cfg: DictConfig) -> int:
    """``eval.calibration_samples``, checked: 0 (off) or at least 2 samples to rank per prompt."""
    k = cfg.eval.calibration_samples
    if k == 1 or k < 0:
        raise ConfigError(f"eval.calibration_samples={k}: use 0 (off) or at least 2 samples to rank per prompt")
    return k
