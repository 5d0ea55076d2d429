"""Losses on sequence log-likelihoods and token distributions, and the ``train.loss`` registry.

Sequence-level losses take per-sequence log-likelihoods of shape (B,): summed token log-probs
("logps") or length-normalised ones ("avg_logp", log P̄ = mean token log-prob), as each one states.
One family per module: ``calibration`` (PLaD ranking and margin, the SLiC-HF NLL regulariser),
``preference`` (DPO, IPO, SimPO, CPO hinge), ``distillation`` (DPKD, token-level forward KL and JSD).
Here: ``PAIR_LOSSES`` maps the ``train.loss`` names to them on a ``PairLogps``, ``KD_DIVERGENCES`` the
``train.kd_divergence`` names, and ``STORED_SCORERS`` says which frozen models' stored log-probs each
loss reads (what dpkd and token_kd need of the teacher beyond its text is ``TEACHER_NEEDS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from plad_core.config import ConfigError
from plad_core.losses.calibration import (
    margin_calibration_loss,
    nll_regularizer,
    ranking_calibration_loss,
)
from plad_core.losses.distillation import (  # noqa: F401
    _at_least_float32,
    dpkd_loss,
    forward_kl_distillation_loss,
    jsd_distillation_loss,
)
from plad_core.losses.preference import cpo_hinge_loss, dpo_loss, ipo_loss, simpo_loss
from plad_core.rouge import rouge_l_scores  # noqa: F401


@dataclass
class PairLogps:
    """The student's log-likelihoods of one pair batch (chosen y_T rows first, then the rejected y_S rows):
    summed log-probs and scored-token counts (EOS included), (B,) each, and the batch for its per-pair columns."""
    chosen_sum: torch.Tensor
    rejected_sum: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    batch: dict[str, Any]

    @classmethod
    def split(cls, total: torch.Tensor, count: torch.Tensor, batch: dict[str, Any]) -> "PairLogps":
        half = total.shape[0] // 2
        return cls(total[:half], total[half:], count[:half], count[half:], batch)

    @property
    def chosen_avg(self) -> torch.Tensor:
        """(B,) log P̄(y_T | x), the length-normalised log-likelihood."""
        return self.chosen_sum / self.chosen_tokens.clamp(min=1)

    @property
    def rejected_avg(self) -> torch.Tensor:
        return self.rejected_sum / self.rejected_tokens.clamp(min=1)

    def column(self, name: str) -> torch.Tensor:
        """(B,) per-pair batch column (a quality score, a stored reference or teacher log-prob), on the
        log-probs' device and dtype."""
        return self.batch[name].to(self.chosen_sum.device, self.chosen_sum.dtype)

    def metrics(self) -> dict[str, float]:
        """Pair accuracy (share of pairs with log P̄(y_T) > log P̄(y_S)) and the mean gap, logged for every loss."""
        margin = (self.chosen_avg - self.rejected_avg).detach()
        return {"pair_accuracy": float((margin > 0).float().mean()), "margin": float(margin.mean())}


def stored_columns(scorer: str) -> tuple[str, str]:
    """The score_pairs columns holding the summed log-probs of (y_T, y_S) under a frozen ``scorer``: ``reference``
    (the SFT student, DPO's reference policy) or ``teacher``. Precomputed once, so no second model is in memory
    while training."""
    return f"{scorer}_chosen_logp", f"{scorer}_rejected_logp"


REFERENCE_COLUMNS, TEACHER_COLUMNS = stored_columns("reference"), stored_columns("teacher")

# Losses on the student's pair log-likelihoods: (PairLogps, beta, gamma) -> scalar loss. See conf/base.yaml.
PAIR_LOSSES: dict[str, Callable[[PairLogps, float, float], torch.Tensor]] = {
    "ranking": lambda lp, beta, gamma: ranking_calibration_loss(lp.chosen_avg, lp.rejected_avg, beta),
    "margin": lambda lp, beta, gamma: margin_calibration_loss(
        lp.chosen_avg, lp.rejected_avg, lp.column("chosen_score"), lp.column("rejected_score"), beta),
    "simpo": lambda lp, beta, gamma: simpo_loss(lp.chosen_avg, lp.rejected_avg, beta, gamma),
    "cpo_hinge": lambda lp, beta, gamma: cpo_hinge_loss(lp.chosen_sum, lp.rejected_sum, beta),
    "dpo": lambda lp, beta, gamma: dpo_loss(lp.chosen_sum, lp.rejected_sum, *map(lp.column, REFERENCE_COLUMNS),
                                            beta),
    # IPO on per-token log-ratios, as TRL's DPOTrainer(loss_type="ipo") after confirming it with the IPO authors
    "ipo": lambda lp, beta, gamma: ipo_loss(lp.chosen_avg, lp.rejected_avg,
                                            lp.column(REFERENCE_COLUMNS[0]) / lp.chosen_tokens,
                                            lp.column(REFERENCE_COLUMNS[1]) / lp.rejected_tokens, beta),
    # DPKD's preference term plus its language-modelling loss on y_T
    "dpkd": lambda lp, beta, gamma: dpkd_loss(lp.chosen_sum, lp.rejected_sum, *map(lp.column, TEACHER_COLUMNS),
                                              lp.chosen_tokens, lp.rejected_tokens, beta)
    + nll_regularizer(lp.chosen_sum, lp.chosen_tokens),
    # SeqKD (Kim & Rush, 2016): SFT on the teacher's outputs; y_S is scored only for the logged pair accuracy
    "seqkd": lambda lp, beta, gamma: nll_regularizer(lp.chosen_sum, lp.chosen_tokens),
}
KD_DIVERGENCES = {"forward_kl": forward_kl_distillation_loss, "jsd": jsd_distillation_loss}
# Every train.loss: the pair losses, and token_kd (``training.steps.token_kd_step``), which needs the teacher in memory.
LOSS_NAMES = (*PAIR_LOSSES, "token_kd")
# The frozen models whose stored log-probs (``stored_columns``) each loss reads.
STORED_SCORERS: dict[str, tuple[str, ...]] = {"dpo": ("reference",), "ipo": ("reference",), "dpkd": ("teacher",)}


def check_loss(loss: str, kd_divergence: str = "forward_kl") -> None:
    """A clear error for an unknown ``train.loss`` or ``train.kd_divergence``, listing the valid names."""
    if loss not in LOSS_NAMES:
        raise ConfigError(f"train.loss='{loss}' is not a known loss; choose one of {', '.join(LOSS_NAMES)}")
    if loss == "token_kd" and kd_divergence not in KD_DIVERGENCES:
        raise ConfigError(f"train.kd_divergence='{kd_divergence}' is not known; choose one of "
                         f"{', '.join(KD_DIVERGENCES)}")


# What dpkd and token_kd read from the teacher beyond its text; the other losses need only y_T.
TEACHER_NEEDS = {"dpkd": "sequence log-probs of y_T and y_S (scored once by the score_pairs stage)",
                 "token_kd": "next-token distributions (the teacher runs next to the student in calibrate)"}


def text_only_losses() -> str:
    """The losses that need only the teacher's text, for error messages."""
    return ", ".join(name for name in LOSS_NAMES if name not in TEACHER_NEEDS)
