"""One step function per objective: SFT, PLaD calibration (every pair loss), token-level KD on the
pairs, and the token-level KD that heals a sliced student.

A step function takes one micro-batch and returns its loss and metrics (means over the batch's
examples); ``loop.train_loop`` runs it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from transformers import PreTrainedModel

from plad_core.losses import KD_DIVERGENCES, PAIR_LOSSES, PairLogps, check_loss
from plad_core.losses.calibration import nll_regularizer
from plad_core.losses.distillation import forward_kl_distillation_loss
from plad_core.training.logprobs import (
    PAIR_FORWARDS,
    check_pair_forward,
    chosen_rows,
    scored_logits,
    sequence_logprobs,
    token_logprob_sums,
)

StepFn = Callable[[Any], tuple[torch.Tensor, dict[str, float]]]


def sft_step(model: PreTrainedModel) -> StepFn:
    """Token-mean negative log-likelihood of the completions in a collated batch."""
    def step(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        total, count = sequence_logprobs(model, batch)
        return -total.sum() / count.sum(), {"scored_tokens": float(count.sum())}
    return step


def calibration_step(model: PreTrainedModel, loss: str, beta: float, gamma: float = 0.0,
                     nll_weight: float = 0.0, pair_forward: str = "concatenated") -> StepFn:
    """One PLaD calibration step on a pair batch (chosen rows first, then rejected, one forward pass):
    the pair loss ``loss`` on the student's log-likelihoods, plus ``nll_weight`` x NLL(chosen).
    ``pair_forward`` (``PAIR_FORWARDS``) picks how the log-likelihoods are computed; shared_prefix needs
    ``batches.pair_batches``' prompt/completion tensors."""
    check_loss(loss)
    check_pair_forward(pair_forward)
    logprobs = PAIR_FORWARDS[pair_forward]
    pair_loss = PAIR_LOSSES[loss]

    def step(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        total, count = logprobs(model, batch)
        logps = PairLogps.split(total, count, batch)
        value = pair_loss(logps, beta, gamma)
        if nll_weight:
            value = value + nll_weight * nll_regularizer(logps.chosen_sum, logps.chosen_tokens)
        return value, logps.metrics()
    return step


def token_kd_step(student: PreTrainedModel, teacher: PreTrainedModel, divergence: str = "forward_kl",
                  nll_weight: float = 0.0) -> StepFn:
    """Token-level KD baseline on the pairs: ``divergence`` (``KD_DIVERGENCES``: forward KL(p_T || p_S) or
    JSD) between the frozen teacher's and the student's next-token distributions at every scored position
    of prompt + y_T (the chosen rows; same vocabulary), averaged over those positions, plus
    ``nll_weight`` x NLL(y_T). The rejected rows share the student's forward pass only for the logged
    pair accuracy and margin; the teacher runs on the chosen rows, without gradients."""
    check_loss("token_kd", divergence)
    kd = KD_DIVERGENCES[divergence]

    def step(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits, targets, predicts = scored_logits(student, batch)
        logps = PairLogps.split(token_logprob_sums(logits, targets, predicts), predicts.sum(-1), batch)
        with torch.no_grad():
            teacher_logits, _, _ = scored_logits(teacher, chosen_rows(batch))
        n = teacher_logits.shape[0]  # positions are row-major, so the chosen rows' come first
        value = kd(logits[:n], teacher_logits.to(logits.device), torch.ones(n, device=logits.device))
        if nll_weight:
            value = value + nll_weight * nll_regularizer(logps.chosen_sum, logps.chosen_tokens)
        return value, logps.metrics()
    return step


def distill_step(student: PreTrainedModel, teacher: PreTrainedModel, temperature: float) -> StepFn:
    """Token-level KD of the student towards the frozen teacher on plain text (student healing)."""
    def step(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.no_grad():
            teacher_logits = teacher(**inputs).logits
        student_logits = student(**inputs).logits
        loss = forward_kl_distillation_loss(student_logits, teacher_logits, batch["attention_mask"], temperature)
        return loss, {}
    return step
