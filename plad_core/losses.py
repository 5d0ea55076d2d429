"""Losses on sequence log-likelihoods and token distributions.

Sequence-level losses take per-sequence log-likelihoods of shape (B,): summed token log-probs
("logps") or length-normalised ones ("avg_logp", log P̄ = mean token log-prob), as each one states.
``LOSSES`` maps the ``train.loss`` names to them.

References
    PLaD: Zhang et al., 2024, "PLaD: Preference-based Large Language Model Distillation with
    Pseudo-Preference Pairs" (arXiv:2406.02886), Section 3, calibration loss.
    SLiC-HF: Zhao et al., 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback" (arXiv:2305.10425).
    DPO: Rafailov et al., 2023, "Direct Preference Optimization" (arXiv:2305.18290), Eq. 7.
    DPKD: Li et al., 2024, "Direct Preference Knowledge Distillation for Large Language Models" (arXiv:2406.19774).
    SimPO: Meng et al., 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward"
    (arXiv:2405.14734).
    IPO: Azar et al., 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences"
    (arXiv:2310.12036).
    CPO: Xu et al., 2024, "Contrastive Preference Optimization" (arXiv:2401.08417); hinge form as in TRL's
    CPOTrainer(loss_type="hinge").
    KD: Hinton et al., 2015, "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531); GKD: Agarwal et al.,
    2024, "On-Policy Distillation of Language Models" (arXiv:2306.13649), generalised JSD.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def margin_calibration_loss(chosen_logp: torch.Tensor, rejected_logp: torch.Tensor, chosen_score: torch.Tensor,
                            rejected_score: torch.Tensor, beta: float) -> torch.Tensor:
    """PLaD margin calibration loss (Zhang et al., 2024, Sec. 3): the ranking loss with a margin that grows
    with the quality gap between the pair,

        L = mean_i max(0, beta * (s(y_T,i) - s(y_S,i)) - log P̄(y_T,i | x_i) + log P̄(y_S,i | x_i))

    Args:
        chosen_logp: (B,) log P̄(y_T | x) under the student.
        rejected_logp: (B,) log P̄(y_S | x) under the student.
        chosen_score: (B,) s(y_T), e.g. from ``rouge_l_scores``.
        rejected_score: (B,) s(y_S).
        beta: scale of the score gap, in nats per token.
    Returns:
        scalar, the mean hinge over the batch.
    """
    margin = beta * (chosen_score - rejected_score)
    return torch.clamp(margin - chosen_logp + rejected_logp, min=0).mean()


def rouge_l_scores(chosen: Sequence[str], rejected: Sequence[str],
                   references: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Default quality score s for ``margin_calibration_loss``: ROUGE-L F1 (rouge-score, with stemming) of each
    output against the row's human reference, or against the teacher output y_T where the row has none
    (then s(y_T) = 1).

    Args:
        chosen, rejected: B texts, y_T and y_S.
        references: B human references; None, NaN or an empty string where the row has none.
    Returns:
        (B,) float32 s(y_T) and (B,) float32 s(y_S).
    """
    from rouge_score import rouge_scorer  # here, not at the top: the losses themselves need only torch

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    chosen_scores, rejected_scores = [], []
    for teacher, student, reference in zip(chosen, rejected, references, strict=True):
        target = reference if isinstance(reference, str) and reference.strip() else teacher
        chosen_scores.append(scorer.score(target, teacher)["rougeL"].fmeasure)
        rejected_scores.append(scorer.score(target, student)["rougeL"].fmeasure)
    return torch.tensor(chosen_scores), torch.tensor(rejected_scores)


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


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor,
             beta: float) -> torch.Tensor:
    """DPO loss (Rafailov et al., 2023, Eq. 7), sigmoid form:

        L = - mean_i log σ(beta * (log π(y_w|x)/π_ref(y_w|x) - log π(y_l|x)/π_ref(y_l|x)))

    Args:
        policy_chosen_logps: (B,) summed log-probs of the chosen sequences under the policy.
        policy_rejected_logps: (B,) same for the rejected sequences.
        reference_chosen_logps: (B,) summed log-probs of the chosen sequences under the frozen reference.
        reference_rejected_logps: (B,) same for the rejected sequences.
        beta: temperature of the implicit reward; higher stays closer to the reference.
    Returns:
        scalar, the mean loss over the batch.
    """
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    return -F.logsigmoid(beta * (chosen_logratios - rejected_logratios)).mean()


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


def simpo_loss(chosen_avg_logp: torch.Tensor, rejected_avg_logp: torch.Tensor, beta: float,
               gamma: float) -> torch.Tensor:
    """SimPO loss (Meng et al., 2024, Eq. 6), reference-free with a target reward margin gamma:

        L = - mean_i log σ(beta * log P̄(y_w|x) - beta * log P̄(y_l|x) - gamma)

    Args:
        chosen_avg_logp: (B,) length-normalised log-likelihood log P̄(y_w | x) under the policy.
        rejected_avg_logp: (B,) log P̄(y_l | x).
        beta: reward scale.
        gamma: target reward margin (in reward units, i.e. after scaling by beta).
    Returns:
        scalar, the mean loss over the batch.
    """
    return -F.logsigmoid(beta * (chosen_avg_logp - rejected_avg_logp) - gamma).mean()


def ipo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor,
             tau: float) -> torch.Tensor:
    """IPO loss (Azar et al., 2023), the sampled loss: a squared regression of the log-ratio gap onto 1 / (2 tau):

        L = mean_i ((log π(y_w|x)/π_ref(y_w|x) - log π(y_l|x)/π_ref(y_l|x)) - 1 / (2 tau))²

    Args:
        policy_chosen_logps: (B,) log-probs of the chosen sequences under the policy (summed in the paper;
            TRL passes length-normalised ones).
        policy_rejected_logps: (B,) same for the rejected sequences.
        reference_chosen_logps: (B,) same for the chosen sequences under the frozen reference.
        reference_rejected_logps: (B,) same for the rejected sequences.
        tau: regularisation strength; the target gap is 1 / (2 tau).
    Returns:
        scalar, the mean loss over the batch.
    """
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    return ((chosen_logratios - rejected_logratios - 1 / (2 * tau)) ** 2).mean()


def cpo_hinge_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                   beta: float) -> torch.Tensor:
    """Reference-free hinge preference loss, the form of TRL's CPOTrainer(loss_type="hinge") (CPO: Xu et al.,
    2024, whose preference term is sigmoid; the hinge follows SLiC, Zhao et al., 2023):

        L = mean_i relu(1 - beta * (log π(y_w|x) - log π(y_l|x)))

    Relation to the PLaD ranking loss: on length-normalised log-probs c = log P̄(y_T|x), r = log P̄(y_S|x)
    and for beta_plad > 0, max(0, beta_plad - (c - r)) = beta_plad * relu(1 - (c - r) / beta_plad), so

        ranking_calibration_loss(c, r, beta_plad) = beta_plad * cpo_hinge_loss(c, r, beta=1 / beta_plad)

    (same zero set, gradients scaled by beta_plad). TRL's CPOTrainer feeds summed log-probs to the hinge, so
    matching PLaD there needs length-normalised inputs.

    Args:
        policy_chosen_logps: (B,) log-probs of the chosen sequences under the policy.
        policy_rejected_logps: (B,) same for the rejected sequences.
        beta: slope; the hinge is zero once the gap reaches 1 / beta.
    Returns:
        scalar, the mean hinge over the batch.
    """
    return torch.relu(1 - beta * (policy_chosen_logps - policy_rejected_logps)).mean()

