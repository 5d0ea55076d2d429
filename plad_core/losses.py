"""Losses on sequence log-likelihoods and token distributions.

References
    PLaD: Zhang et al., 2024, "PLaD: Preference-based Large Language Model Distillation with
    Pseudo-Preference Pairs" (arXiv:2406.02886), Section 3, calibration loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ranking_calibration_loss(chosen_logp: torch.Tensor, rejected_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """PLaD ranking calibration loss (Zhang et al., 2024, Sec. 3):

        L = mean_i max(0, beta - log P̄(y_T,i | x_i) + log P̄(y_S,i | x_i))

    where log P̄ is the student's length-normalised sequence log-likelihood (mean token log-prob).
    The teacher output y_T is the chosen sequence, the student's own sample y_S the rejected one.

    Args:
        chosen_logp: (B,) log P̄(y_T | x) under the student.
        rejected_logp: (B,) log P̄(y_S | x) under the student.
        beta: the margin, in nats per token.
    Returns:
        scalar, the mean hinge over the batch.
    """
    return torch.clamp(beta - chosen_logp + rejected_logp, min=0).mean()


def forward_kl_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                                 temperature: float = 1.0) -> torch.Tensor:
    """Token-level KD (Hinton et al., 2015): mean over unmasked positions of KL(p_T || p_S) at ``temperature``,
    scaled by temperature², so gradients keep their size as the temperature changes.

    Args:
        student_logits, teacher_logits: (B, T, V), same vocabulary.
        mask: (B, T), 1 where the position counts.
    """
    t = temperature
    teacher_logp = F.log_softmax(teacher_logits.float() / t, dim=-1)
    student_logp = F.log_softmax(student_logits.float() / t, dim=-1)
    kl = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1) * t * t
