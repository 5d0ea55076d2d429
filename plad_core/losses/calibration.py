"""PLaD's calibration losses on the student's length-normalised log-likelihoods, and the SLiC-HF NLL
regulariser added to them.

References
    PLaD: Zhang et al., 2024, "PLaD: Preference-based Large Language Model Distillation with
    Pseudo-Preference Pairs" (arXiv:2406.02886), Section 3, calibration loss.
    SLiC-HF: Zhao et al., 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback" (arXiv:2305.10425).
"""

from __future__ import annotations

import torch


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


def margin_calibration_loss(chosen_logp: torch.Tensor, rejected_logp: torch.Tensor, chosen_score: torch.Tensor,
                            rejected_score: torch.Tensor, beta: float) -> torch.Tensor:
    """PLaD margin calibration loss (Zhang et al., 2024, Sec. 3): the ranking loss with a margin that grows
    with the quality gap between the pair,

        L = mean_i max(0, beta * (s(y_T,i) - s(y_S,i)) - log P̄(y_T,i | x_i) + log P̄(y_S,i | x_i))

    The score s. PLaD's margin variant scales the margin by a quality score of each output; its prompts
    are unlabeled, so s must not need a human label. Here (``rouge.rouge_l_scores``, as the trainer
    calls it) s is ROUGE-L F1 against y_T: s(y_T) = 1 and s(y_S) = ROUGE-L(y_S, y_T), so the margin is
    beta * (1 - ROUGE-L(y_S, y_T)), wide for a y_S far from the teacher's text and near zero for a
    near-copy. Only under ``pairs.references: true`` (the opt-in labeled-pair setting, not PLaD's) do
    the pairs carry the human reference, and s is then ROUGE-L against it.

    Args:
        chosen_logp: (B,) log P̄(y_T | x) under the student.
        rejected_logp: (B,) log P̄(y_S | x) under the student.
        chosen_score: (B,) s(y_T), from ``rouge.rouge_l_scores`` (1 without a reference).
        rejected_score: (B,) s(y_S).
        beta: scale of the score gap, in nats per token.
    Returns:
        scalar, the mean hinge over the batch.
    """
    margin = beta * (chosen_score - rejected_score)
    return torch.clamp(margin - chosen_logp + rejected_logp, min=0).mean()


def nll_regularizer(chosen_logp_sum: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """SLiC-HF regularizer (Zhao et al., 2023): the token-mean negative log-likelihood of the chosen
    sequences, added to a calibration loss as ``lambda * nll_regularizer(...)``:

        L_reg = - sum_i log P(y_T,i | x_i) / sum_i |y_T,i|

    Args:
        chosen_logp_sum: (B,) summed token log-probs log P(y_T | x) under the student.
        chosen_tokens: (B,) token counts |y_T|.
    Returns:
        scalar, the NLL per chosen token over the batch (as in SFT).
    """
    return -chosen_logp_sum.sum() / chosen_tokens.sum().clamp(min=1)
