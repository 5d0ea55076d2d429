"""Training: one explicit loop shared by healing, SFT and calibration, plus their step functions.

Sequences are ``prompt + " " + completion + EOS``; only completion tokens (EOS included) are scored.
"""

from __future__ import annotations

import math
import random
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from plad_core.losses import (cpo_hinge_loss, forward_kl_distillation_loss, margin_calibration_loss, nll_regularizer,
                              ranking_calibration_loss, simpo_loss)
from plad_core.pair_forward import shared_prefix_logprobs


@dataclass
class Encoded:
    ids: list[int]
    n_prompt: int  # the first n_prompt tokens are context, the rest is scored


def encode(tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str | None, max_len: int) -> Encoded:
    """Token ids of prompt and completion; the prompt is cut from the left when the pair is too long."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if completion is None:
        return Encoded(prompt_ids[:max_len], 0)
    completion_ids = tokenizer(" " + completion.strip(), add_special_tokens=False)["input_ids"]
    completion_ids = completion_ids[:max_len - 2] + [tokenizer.eos_token_id]
    prompt_ids = prompt_ids[-(max_len - len(completion_ids)):]
    return Encoded(prompt_ids + completion_ids, len(prompt_ids))


def collate(items: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch with ``score_mask`` marking the scored (completion) tokens."""
    width = max(len(e.ids) for e in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    score_mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, e in enumerate(items):
        input_ids[row, :len(e.ids)] = torch.tensor(e.ids)
        attention_mask[row, :len(e.ids)] = 1
        score_mask[row, max(e.n_prompt, 1):len(e.ids)] = 1  # plain text (n_prompt=0): all but the first token
    return {"input_ids": input_ids, "attention_mask": attention_mask, "score_mask": score_mask}


def sequence_logprobs(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of the scored tokens of each sequence, and their count: (B,), (B,).

    The LM head runs only on the positions that predict a scored token: with ~300-token prompts
    and ~40-token summaries that skips most of the vocabulary projection.
    """
    device = model.get_output_embeddings().weight.device
    input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    predicts = batch["score_mask"][:, 1:].bool().to(device)
    rows = torch.nonzero(predicts, as_tuple=True)[0]
    logits = model.get_output_embeddings()(hidden[:, :-1][predicts])
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> float32; float64 stays
    token_logp = -F.cross_entropy(logits, input_ids[:, 1:][predicts], reduction="none")
    n_seq = input_ids.shape[0]
    total = torch.zeros(n_seq, dtype=token_logp.dtype, device=token_logp.device).index_add(0, rows, token_logp)
    return total, predicts.sum(-1)


def length_grouped_batches(items: Sequence[Any], length: Callable[[Any], int], batch_size: int,
                           seed: int) -> list[list[Any]]:
    """Batches of similar length (little padding), in a seeded random order."""
    ordered = sorted(items, key=length)
    batches = [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]
    random.Random(seed).shuffle(batches)
    return batches


def optim_kwargs(optim: Any) -> dict[str, Any]:
    """The ``train_loop`` keyword arguments held by an ``OptimConfig`` node."""
    return {k: optim[k] for k in ("lr", "epochs", "max_steps", "grad_accum", "weight_decay", "warmup_steps",
                                  "schedule", "grad_clip", "bf16", "seed")}


StepFn = Callable[[Any], tuple[torch.Tensor, dict[str, float]]]


def train_loop(model: PreTrainedModel, batches: Sequence[Any], step_fn: StepFn, *, lr: float, epochs: int = 1,
               max_steps: int = 0, grad_accum: int = 1, weight_decay: float = 0.0, warmup_steps: int = 0,
               schedule: str = "cosine", grad_clip: float = 1.0, bf16: bool = False, seed: int = 0,
               desc: str = "train") -> list[dict[str, float]]:
    """AdamW over ``batches`` for ``epochs`` (or ``max_steps`` optimizer steps when > 0).

    ``step_fn(batch)`` returns the loss and metrics of one micro-batch. Returns one log row per
    optimizer step: step, epoch, lr, loss and the mean of each metric over its micro-batches.
    """
    torch.manual_seed(seed)
    model.train()
    steps_per_epoch = math.ceil(len(batches) / grad_accum)
    total = max_steps if max_steps > 0 else steps_per_epoch * epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    history: list[dict[str, float]] = []
    step, epoch, pending = 0, 0, []
    bar = tqdm(total=total, desc=desc, unit="step")
    while step < total:
        order = list(range(len(batches)))
        random.Random(seed + epoch).shuffle(order)
        for i, index in enumerate(order):
            with autocast:
                loss, metrics = step_fn(batches[index])
            (loss / grad_accum).backward()
            pending.append({"loss": loss.item(), **metrics})
            if len(pending) < grad_accum and i < len(order) - 1:
                continue
            grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip) if grad_clip > 0 else torch.tensor(0.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            row = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm)}
            row.update({k: sum(p[k] for p in pending) / len(pending) for k in pending[0]})
            history.append(row)
            pending = []
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if step >= total:
                break
        epoch += 1
    bar.close()
    model.eval()
    return history


def sft_step(model: PreTrainedModel) -> StepFn:
    """Token-mean negative log-likelihood of the completions in a collated batch."""
    def step(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        total, count = sequence_logprobs(model, batch)
        return -total.sum() / count.sum(), {"tokens": float(count.sum())}
    return step


# Pair losses that need only the student: (avg_logp, sum_logp, batch, beta, gamma) -> loss, chosen first half.
PAIR_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "ranking": lambda avg, total, batch, beta, gamma: ranking_calibration_loss(*avg, beta),
    "margin": lambda avg, total, batch, beta, gamma: margin_calibration_loss(
        *avg, batch["chosen_score"], batch["rejected_score"], beta),
    "simpo": lambda avg, total, batch, beta, gamma: simpo_loss(*avg, beta, gamma),
    "cpo_hinge": lambda avg, total, batch, beta, gamma: cpo_hinge_loss(*total, beta),
}


# train.pair_forward: how a pair batch's summed log-probs are computed (both give the same values).
PAIR_FORWARDS: dict[str, Callable[[PreTrainedModel, dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]] = {
    "shared_prefix": shared_prefix_logprobs,  # prompt once, its KV cache reused by both completions
    "concatenated": sequence_logprobs,        # prompt + chosen and prompt + rejected, as TRL does
}


def calibration_step(model: PreTrainedModel, loss: str, beta: float, gamma: float = 0.0,
                     nll_weight: float = 0.0, pair_forward: str = "concatenated") -> StepFn:
    """One PLaD calibration step on a pair batch (chosen rows first, then rejected, one forward pass):
    the pair loss ``loss`` on the student's log-likelihoods, plus ``nll_weight`` x NLL(chosen).
    ``pair_forward`` (``PAIR_FORWARDS``) picks how the log-likelihoods are computed; shared_prefix needs
    ``pair_training.pair_batches``' prompt/completion tensors."""
    if pair_forward not in PAIR_FORWARDS:
        raise ValueError(f"train.pair_forward='{pair_forward}' is not known; choose one of {', '.join(PAIR_FORWARDS)}")
    logprobs = PAIR_FORWARDS[pair_forward]
    pair_loss = PAIR_LOSSES[loss]

    def step(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        total, count = logprobs(model, batch)
        half = total.shape[0] // 2
        mean_logp = total / count.clamp(min=1)
        chosen, rejected = mean_logp[:half], mean_logp[half:]
        value = pair_loss((chosen, rejected), (total[:half], total[half:]), batch, beta, gamma)
        if nll_weight:
            value = value + nll_weight * nll_regularizer(total[:half], count[:half])
        margin = (chosen - rejected).detach()
        return value, {"pair_accuracy": float((margin > 0).float().mean()), "margin": float(margin.mean())}
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


@torch.no_grad()
def perplexity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_len: int,
               batch_size: int = 8) -> float:
    """exp of the token-mean NLL over ``texts`` (each scored from its second token)."""
    model.eval()
    encoded = [encode(tokenizer, t, None, max_len) for t in texts]
    nll, count = 0.0, 0
    for i in range(0, len(encoded), batch_size):
        total, n = sequence_logprobs(model, collate(encoded[i:i + batch_size], tokenizer.pad_token_id))
        nll -= float(total.sum())
        count += int(n.sum())
    return math.exp(nll / max(count, 1))
