"""Training: one explicit loop shared by healing, SFT and calibration, plus their step functions.

Sequences are ``prompt + " " + completion + EOS``; only completion tokens (EOS included) are scored.
"""

from __future__ import annotations

import logging
import math
import random
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from plad_core import checkpoint, parallel
from plad_core.losses import (cpo_hinge_loss, dpkd_loss, dpo_loss, forward_kl_distillation_loss, ipo_loss,
                              jsd_distillation_loss, margin_calibration_loss, nll_regularizer, ranking_calibration_loss,
                              simpo_loss)
from plad_core.pair_forward import shared_prefix_logprobs
from plad_core.parallel import ShardFn

log = logging.getLogger("plad.train")


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


def scored_logits(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 (float64 for a float64 model) logits (N, V) at the N positions that predict a scored token, row by row, with the tokens
    they predict (N,) and the mask of those positions (B, T-1).

    The LM head runs only on these positions: with ~300-token prompts and ~40-token summaries that
    skips most of the vocabulary projection.
    """
    device = model.get_output_embeddings().weight.device
    input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    predicts = batch["score_mask"][:, 1:].bool().to(device)
    logits = model.get_output_embeddings()(hidden[:, :-1][predicts])
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> float32; float64 stays
    return logits, input_ids[:, 1:][predicts], predicts


def sequence_logprobs(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of the scored tokens of each sequence, and their count: (B,), (B,)."""
    logits, targets, predicts = scored_logits(model, batch)
    return _sum_by_row(-F.cross_entropy(logits, targets, reduction="none"), predicts), predicts.sum(-1)


def _sum_by_row(values: torch.Tensor, predicts: torch.Tensor) -> torch.Tensor:
    """(B,) sums of the (N,) per-position ``values`` of ``scored_logits`` over each row's positions."""
    rows = torch.nonzero(predicts, as_tuple=True)[0]
    return torch.zeros(predicts.shape[0], dtype=values.dtype, device=values.device).index_add(0, rows, values)


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
                                  "schedule", "grad_clip", "bf16", "seed", "gradient_checkpointing",
                                  "checkpoint_every")}


StepFn = Callable[[Any], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class Evaluation:
    """Held-out evaluation inside ``train_loop``.

    ``step_fn`` runs (without gradients, in eval mode) over ``batches`` every ``every`` optimizer
    steps and at the last step; its loss and metrics, averaged over the held-out examples, enter
    that step's log row as ``eval_<name>``. The best step by ``metric`` (``mode`` min or max) is
    tracked; with ``keep="best"`` its weights are the model ``train_loop`` ends with, else the last.
    """
    batches: Sequence[Any]
    every: int
    metric: str = "eval_loss"
    mode: str = "min"
    keep: str = "last"

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max") or self.keep not in ("best", "last") or self.every < 1:
            raise ValueError(f"evaluation needs mode min|max, keep best|last and every >= 1; got mode={self.mode!r}, "
                             f"keep={self.keep!r}, every={self.every}")

    def better(self, value: float, best: float | None) -> bool:
        return best is None or (value < best if self.mode == "min" else value > best)

    def best_row(self, history: Sequence[dict[str, float]]) -> dict[str, float] | None:
        """The first log row with the best ``metric`` (None when nothing was evaluated)."""
        best = None
        for row in history:
            if self.metric in row and self.better(row[self.metric], best[self.metric] if best else None):
                best = row
        return best


class _Step(torch.nn.Module):
    """``step_fn`` as a module's forward, so that DDP sees the whole step, however it calls the model."""

    def __init__(self, model: torch.nn.Module, step_fn: StepFn):
        super().__init__()
        self.model = model
        self.step_fn = step_fn

    def forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return self.step_fn(batch)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, dict):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return batch


def _padding(batch: Any) -> tuple[float, float]:
    """(real tokens, padded positions) of a collated batch; (0, 0) when it has no attention mask."""
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    if mask is None:
        return 0.0, 0.0
    tokens = float(mask.sum())
    return tokens, float(mask.numel()) - tokens


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(seed + epoch).shuffle(order)
    return order


def train_loop(model: PreTrainedModel, batches: Sequence[Any], step_fn: StepFn, *, lr: float, epochs: int = 1,
               max_steps: int = 0, grad_accum: int = 1, weight_decay: float = 0.0, warmup_steps: int = 0,
               schedule: str = "cosine", grad_clip: float = 1.0, bf16: bool = False, seed: int = 0,
               gradient_checkpointing: bool = False, checkpoint_every: int = 0,
               checkpoint_dir: Path | None = None, evaluation: Evaluation | None = None,
               shard: ShardFn | None = None, strategy: str = "ddp", desc: str = "train") -> list[dict[str, float]]:
    """AdamW over ``batches`` for ``epochs`` (or ``max_steps`` optimizer steps when > 0), on the
    model's device, with bf16 autocast when ``bf16``.

    ``step_fn(batch)`` returns the loss and metrics (means over the batch's examples) of one
    micro-batch. Returns one log row per optimizer step: step, epoch, lr, grad_norm, loss and the
    mean of each metric over its micro-batches, ``tokens`` (real tokens in the step's batches) and
    ``padding_share`` (their pad positions over all positions), plus ``eval_*`` on evaluated steps.

    - ``checkpoint_dir`` and ``checkpoint_every`` > 0: a checkpoint (``plad_core.checkpoint``) every
      ``checkpoint_every`` steps and at the last; a ``last.pt`` found there at the start is resumed
      from exactly: the same weights, log and RNG as if the run had not stopped.
    - ``evaluation``: held-out evaluation and the best-or-last choice (needs ``checkpoint_dir`` for
      ``keep="best"``: the best weights go to ``best.pt``).
    - Several ranks (``torchrun``; ``plad_core.parallel``): each batch is a global batch; ``shard``
      gives each rank its part, gradients are averaged by DDP with each rank's loss weighted by its
      share of the examples, so losses and gradients are those of one process on the whole batch.
      ``strategy`` (``parallel.STRATEGIES``): ``ddp`` keeps a whole model on every rank, ``fsdp`` shards
      the model (in place), its gradients and the optimizer state across the ranks. Rank 0 writes the
      checkpoints, gathered whole (``parallel.full_state``): the same files under every strategy.
    """
    r = parallel.ranks()
    if r.world > 1 and shard is None:
        raise ValueError(f"train_loop on {r.world} ranks needs a shard function to split each batch")
    if evaluation is not None and evaluation.keep == "best" and checkpoint_dir is None:
        raise ValueError("evaluation keep='best' needs a checkpoint_dir for the best weights")
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    runner = parallel.wrap(_Step(model, step_fn), device, strategy, bf16)
    runner.train()
    steps_per_epoch = math.ceil(len(batches) / grad_accum)
    total = max_steps if max_steps > 0 else steps_per_epoch * epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    fingerprint = {"batches": len(batches), "total_steps": total, "grad_accum": grad_accum, "seed": seed}
    history: list[dict[str, float]] = []
    best: dict[str, float] | None = None
    step, epoch, index = 0, 0, 0
    saved = checkpoint.load_last(checkpoint_dir, fingerprint) if checkpoint_dir is not None else None
    if saved is not None:
        parallel.load_full_state(model, saved["model"], optimizer, saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        checkpoint.set_rng_state(saved["rng"], device)
        history, best = saved["history"], saved["best"]
        step, epoch, index = saved["position"]["step"], saved["position"]["epoch"], saved["position"]["index"]
        log.info("%s: resumed at step %d of %d from %s", desc, step, total, checkpoint_dir / checkpoint.LAST)

    def split(batch: Any) -> tuple[Any, int, int]:
        part, count, size = shard(batch, r.rank, r.world) if shard is not None else (batch, 1, 1)
        return _to_device(part, device), count, size

    def evaluate() -> dict[str, float]:
        runner.eval()
        sums: dict[str, float] = {}
        count = 0
        with torch.no_grad(), autocast:
            for batch in evaluation.batches:
                part, n, _ = split(batch)
                loss, metrics = runner(part)
                for key, value in {"loss": loss.item(), **metrics}.items():
                    sums[f"eval_{key}"] = sums.get(f"eval_{key}", 0.0) + n * value
                count += n
        runner.train()
        return parallel.weighted_mean(sums, count)

    pending: list[dict[str, float]] = []
    bar = tqdm(total=total, initial=step, desc=desc, unit="step", disable=r.world > 1)  # ranks log lines instead
    while step < total:
        order = _epoch_order(len(batches), seed, epoch)
        while index < len(order) and step < total:
            batch = batches[order[index]]
            index += 1
            last_micro = len(pending) + 1 == grad_accum or index == len(order)
            part, n, size = split(batch)
            with parallel.no_sync(runner, last_micro), autocast:
                loss, metrics = runner(part)
                (loss * (r.world * n / size / grad_accum)).backward()
            tokens, padded = _padding(batch)
            pending.append({**parallel.weighted_mean({k: n * v for k, v in {"loss": loss.item(), **metrics}.items()}, n),
                            "tokens": tokens, "padded": padded})
            if not last_micro:
                continue
            grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip) if grad_clip > 0 else torch.tensor(0.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens, padded = sum(p.pop("tokens") for p in pending), sum(p.pop("padded") for p in pending)
            row = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm)}
            row.update({k: sum(p[k] for p in pending) / len(pending) for k in pending[0]})
            row.update(tokens=tokens, padding_share=padded / max(tokens + padded, 1.0))
            pending = []
            evaluated = evaluation is not None and (step % evaluation.every == 0 or step == total)
            if evaluated:
                row.update(evaluate())
                if evaluation.better(row[evaluation.metric], best["value"] if best else None):
                    best = {"step": step, "value": row[evaluation.metric]}
                    if evaluation.keep == "best":
                        weights, _ = parallel.full_state(model)  # on every rank: FSDP gathers the shards
                        if r.rank == 0:
                            checkpoint.save_best(checkpoint_dir, weights)
            history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            saved = checkpoint_dir is not None and checkpoint_every > 0 and (step % checkpoint_every == 0 or step == total)
            if saved:
                weights, optimizer_state = parallel.full_state(model, optimizer)  # on every rank, as above
            if saved and r.rank == 0:
                position = {"step": step, "epoch": epoch, "index": index} if index < len(order) else \
                    {"step": step, "epoch": epoch + 1, "index": 0}
                checkpoint.save_last(checkpoint_dir, model_state=weights, optimizer_state=optimizer_state,
                                     scheduler=scheduler, position=position, history=history, best=best,
                                     fingerprint=fingerprint, device=device)
            if (evaluated or saved) and r.rank == 0:
                log.info("%s: step %d/%d, %s%s", desc, step, total,
                         ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k == "loss" or k.startswith("eval_")),
                         "; checkpoint saved" if saved else "")
        if index == len(order):
            epoch, index = epoch + 1, 0
    bar.close()
    if evaluation is not None and evaluation.keep == "best" and best is not None:
        parallel.barrier()
        parallel.load_full_state(model, checkpoint.load_best(checkpoint_dir))
        log.info("%s: kept step %d (%s %.4f)", desc, best["step"], evaluation.metric, best["value"])
    if gradient_checkpointing:
        model.gradient_checkpointing_disable()
    model.eval()
    return history


def sft_step(model: PreTrainedModel) -> StepFn:
    """Token-mean negative log-likelihood of the completions in a collated batch."""
    def step(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        total, count = sequence_logprobs(model, batch)
        return -total.sum() / count.sum(), {"scored_tokens": float(count.sum())}
    return step


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
# Every train.loss: the pair losses, and token_kd (``token_kd_step``), which needs the teacher in memory.
LOSS_NAMES = (*PAIR_LOSSES, "token_kd")
# The frozen models whose stored log-probs (``stored_columns``) each loss reads.
STORED_SCORERS: dict[str, tuple[str, ...]] = {"dpo": ("reference",), "ipo": ("reference",), "dpkd": ("teacher",)}


def check_loss(loss: str, kd_divergence: str = "forward_kl") -> None:
    """A clear error for an unknown ``train.loss`` or ``train.kd_divergence``, listing the valid names."""
    if loss not in LOSS_NAMES:
        raise ValueError(f"train.loss='{loss}' is not a known loss; choose one of {', '.join(LOSS_NAMES)}")
    if loss == "token_kd" and kd_divergence not in KD_DIVERGENCES:
        raise ValueError(f"train.kd_divergence='{kd_divergence}' is not known; choose one of "
                         f"{', '.join(KD_DIVERGENCES)}")


# train.pair_forward: how a pair batch's summed log-probs are computed (both give the same values).
PAIR_FORWARDS: dict[str, Callable[[PreTrainedModel, dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]] = {
    "shared_prefix": shared_prefix_logprobs,  # prompt once, its KV cache reused by both completions
    "concatenated": sequence_logprobs,        # prompt + chosen and prompt + rejected, as TRL does
}


def check_pair_forward(pair_forward: str, gradient_checkpointing: bool = False) -> None:
    """A clear error for an unknown ``train.pair_forward``, or shared_prefix with gradient checkpointing
    (transformers drops the key/value cache inside checkpointed layers)."""
    if pair_forward not in PAIR_FORWARDS:
        raise ValueError(f"train.pair_forward='{pair_forward}' is not known; choose one of {', '.join(PAIR_FORWARDS)}")
    if pair_forward == "shared_prefix" and gradient_checkpointing:
        raise ValueError("train.pair_forward=shared_prefix cannot run with train.optim.gradient_checkpointing=true: "
                         "checkpointed layers drop the prompt's key/value cache; set train.pair_forward=concatenated")


def calibration_step(model: PreTrainedModel, loss: str, beta: float, gamma: float = 0.0,
                     nll_weight: float = 0.0, pair_forward: str = "concatenated") -> StepFn:
    """One PLaD calibration step on a pair batch (chosen rows first, then rejected, one forward pass):
    the pair loss ``loss`` on the student's log-likelihoods, plus ``nll_weight`` x NLL(chosen).
    ``pair_forward`` (``PAIR_FORWARDS``) picks how the log-likelihoods are computed; shared_prefix needs
    ``pair_training.pair_batches``' prompt/completion tensors."""
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


def chosen_rows(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The chosen half of a pair batch's token tensors, cut to its own longest row."""
    half = batch["input_ids"].shape[0] // 2
    width = int(batch["attention_mask"][:half].sum(-1).max())
    return {k: batch[k][:half, :width] for k in ("input_ids", "attention_mask", "score_mask")}


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
        logps = PairLogps.split(_sum_by_row(-F.cross_entropy(logits, targets, reduction="none"), predicts),
                                predicts.sum(-1), batch)
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
