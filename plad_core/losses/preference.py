"""Preference-optimisation losses on the policy's sequence log-likelihoods: DPO, IPO (against a frozen
reference), SimPO and the CPO hinge (reference-free).

References
    DPO: Rafailov et al., 2023, "Direct Preference Optimization" (arXiv:2305.18290), Eq. 7.
    SimPO: Meng et al., 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward"
    (arXiv:2405.14734).
    IPO: Azar et al., 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences"
    (arXiv:2310.12036).
    CPO: Xu et al., 2024, "Contrastive Preference Optimization" (arXiv:2401.08417); hinge form as in TRL's
    CPOTrainer(loss_type="hinge").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
