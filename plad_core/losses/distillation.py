"""Distillation losses towards a frozen teacher: token-level forward KL and JSD on next-token
distributions, and DPKD on sequence log-likelihoods.

References
    KD: Hinton et al., 2015, "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531); GKD: Agarwal et al.,
    2024, "On-Policy Distillation of Language Models" (arXiv:2306.13649), generalised JSD.
    DPKD: Li et al., 2024, "Direct Preference Knowledge Distillation for Large Language Models" (arXiv:2406.19774).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits in float32 for the softmax; float32 and float64 unchanged."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def forward_kl_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                                 temperature: float = 1.0) -> torch.Tensor:
    """Token-level KD (Hinton et al., 2015): mean over unmasked positions of KL(p_T || p_S) at ``temperature``,
    scaled by temperature², so gradients keep their size as the temperature changes.

    Args:
        student_logits, teacher_logits: (B, T, V), same vocabulary.
        mask: (B, T), 1 where the position counts.
    """
    t = temperature
    teacher_logp = F.log_softmax(_at_least_float32(teacher_logits) / t, dim=-1)
    student_logp = F.log_softmax(_at_least_float32(student_logits) / t, dim=-1)
    kl = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1) * t * t


def jsd_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                          temperature: float = 1.0) -> torch.Tensor:
    """Token-level KD with the Jensen-Shannon divergence (the generalised JSD of GKD, Agarwal et al., 2024,
    "On-Policy Distillation of Language Models", arXiv:2306.13649, Eq. 2, at its symmetric point beta = 0.5):

        JSD(p_T || p_S) = 1/2 KL(p_T || m) + 1/2 KL(p_S || m),   m = (p_T + p_S) / 2

    per position, averaged over unmasked positions and scaled by temperature² like
    ``forward_kl_distillation_loss``. Bounded by log 2, and unlike the forward KL it also penalises mass
    the student puts where the teacher has none.

    Args:
        student_logits, teacher_logits: (..., V), same vocabulary (e.g. (B, T, V) or (N, V)).
        mask: the leading shape of the logits, 1 where the position counts.
    """
    t = temperature
    teacher_logp = F.log_softmax(_at_least_float32(teacher_logits) / t, dim=-1)
    student_logp = F.log_softmax(_at_least_float32(student_logits) / t, dim=-1)
    mixture_logp = torch.logsumexp(torch.stack([teacher_logp, student_logp]), dim=0) - math.log(2)
    jsd = 0.5 * (teacher_logp.exp() * (teacher_logp - mixture_logp)).sum(-1) \
        + 0.5 * (student_logp.exp() * (student_logp - mixture_logp)).sum(-1)
    return (jsd * mask).sum() / mask.sum().clamp(min=1) * t * t


def dpkd_loss(student_chosen_logps: torch.Tensor, student_rejected_logps: torch.Tensor,
              teacher_chosen_logps: torch.Tensor, teacher_rejected_logps: torch.Tensor,
              chosen_lengths: torch.Tensor, rejected_lengths: torch.Tensor, beta: float) -> torch.Tensor:
    """DPKD loss (Li et al., 2024): DPO with the teacher p as the reference of the student q and
    length-normalised log-ratios, the teacher output y_T chosen and the student output y_S rejected:

        L = - mean_i log σ(beta / |y_T| * log(q(y_T|x) / p(y_T|x)) - beta / |y_S| * log(q(y_S|x) / p(y_S|x)))

    Args:
        student_chosen_logps: (B,) summed log q(y_T | x).
        student_rejected_logps: (B,) summed log q(y_S | x).
        teacher_chosen_logps: (B,) summed log p(y_T | x).
        teacher_rejected_logps: (B,) summed log p(y_S | x).
        chosen_lengths: (B,) |y_T| in tokens.
        rejected_lengths: (B,) |y_S| in tokens.
        beta: temperature of the implicit reward.
    Returns:
        scalar, the mean loss over the batch.
    """
    chosen_reward = beta * (student_chosen_logps - teacher_chosen_logps) / chosen_lengths
    rejected_reward = beta * (student_rejected_logps - teacher_rejected_logps) / rejected_lengths
    return -F.logsigmoid(chosen_reward - rejected_reward).mean()
