"""One explicit training loop shared by healing, SFT and calibration, with held-out evaluation.

``train_loop`` reads as nanoGPT's: setup and resume in named helpers, then a loop whose body is five
phases, each a call or a few lines: next batch, accumulate micro-batches, optimizer step, log and
evaluate, checkpoint.
"""

from __future__ import annotations

import logging
import math
import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_scheduler

from plad_core import models
from plad_core.training import checkpoint, distributed, held_out
from plad_core.training.batches import padding, to_device
from plad_core.training.distributed import ShardFn
from plad_core.training.held_out import Evaluation
from plad_core.training.steps import StepFn

log = logging.getLogger("plad.train")


def optim_kwargs(optim: Any) -> dict[str, Any]:
    """The ``train_loop`` keyword arguments held by an ``OptimConfig`` node."""
    return {k: optim[k] for k in ("lr", "epochs", "max_steps", "grad_accum", "weight_decay", "warmup_steps",
                                  "schedule", "grad_clip", "bf16", "seed", "gradient_checkpointing",
                                  "checkpoint_every")}


class _Step(torch.nn.Module):
    """``step_fn`` as a module's forward, so that DDP sees the whole step, however it calls the model."""

    def __init__(self, model: torch.nn.Module, step_fn: StepFn):
        super().__init__()
        self.model = model
        self.step_fn = step_fn

    def forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return self.step_fn(batch)


@dataclass
class _Run:
    """What ``train_loop``'s setup builds: the wrapped step, the optimizer and schedule, where and how long."""
    model: PreTrainedModel
    runner: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    autocast: ContextManager[Any]
    device: torch.device
    ranks: distributed.Ranks
    shard: ShardFn | None
    total: int
    fingerprint: dict[str, Any]


@dataclass
class _Progress:
    """Where the run is (what a checkpoint saves): the log so far, the best evaluation, the data position."""
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] | None = None
    step: int = 0
    epoch: int = 0
    index: int = 0


def train_loop(model: PreTrainedModel, batches: Sequence[Any], step_fn: StepFn, *, lr: float, epochs: int = 1,
               max_steps: int = 0, grad_accum: int = 1, weight_decay: float = 0.0, warmup_steps: int = 0,
               schedule: str = "cosine", grad_clip: float = 1.0, bf16: bool | str = False, seed: int = 0,
               gradient_checkpointing: bool = False, checkpoint_every: int = 0,
               checkpoint_dir: Path | None = None, evaluation: Evaluation | None = None,
               shard: ShardFn | None = None, strategy: str = "ddp", desc: str = "train") -> list[dict[str, float]]:
    """AdamW over ``batches`` for ``epochs`` (or ``max_steps`` optimizer steps when > 0), on the
    model's device, with bf16 autocast when ``bf16`` (``auto``: where bf16 is fast, ``models.resolve_bf16``).

    ``step_fn(batch)`` returns the loss and metrics (means over the batch's examples) of one
    micro-batch. Returns one log row per optimizer step: step, epoch, lr, grad_norm, loss and the
    mean of each metric over its micro-batches, ``tokens`` (real tokens in the step's batches) and
    ``padding_share`` (their pad positions over all positions), plus ``eval_*`` on evaluated steps.

    - ``checkpoint_dir`` and ``checkpoint_every`` > 0: a checkpoint (``training.checkpoint``) every
      ``checkpoint_every`` steps and at the last; a ``last.pt`` found there at the start is resumed
      from exactly: the same weights, log and RNG as if the run had not stopped.
    - ``evaluation``: held-out evaluation and the best-or-last choice (needs ``checkpoint_dir`` for
      ``keep="best"``: the best weights go to ``best.pt``).
    - Several ranks (``torchrun``; ``training.distributed``): each batch is a global batch; ``shard``
      gives each rank its part, gradients are averaged by DDP with each rank's loss weighted by its
      share of the examples, so losses and gradients are those of one process on the whole batch.
      ``strategy`` (``distributed.STRATEGIES``): ``ddp`` keeps a whole model on every rank, ``fsdp`` shards
      the model (in place), its gradients and the optimizer state across the ranks. Rank 0 writes the
      checkpoints, gathered whole (``distributed.full_state``): the same files under every strategy.
    """
    _check_arguments(shard, evaluation, checkpoint_dir)
    run = _setup(model, batches, step_fn, lr=lr, epochs=epochs, max_steps=max_steps, grad_accum=grad_accum,
                 weight_decay=weight_decay, warmup_steps=warmup_steps, schedule=schedule, bf16=bf16, seed=seed,
                 gradient_checkpointing=gradient_checkpointing, strategy=strategy, shard=shard)
    progress = _resume(run, checkpoint_dir, desc)
    bar = tqdm(total=run.total, initial=progress.step, desc=desc, unit="step", disable=run.ranks.world > 1)  # ranks log lines instead
    while progress.step < run.total:
        order = _epoch_order(len(batches), seed, progress.epoch)
        while progress.index < len(order) and progress.step < run.total:
            # next batch: this step's micro-batches, at most grad_accum, never past the epoch's end
            micro_batches = _next_batches(batches, order, progress, grad_accum)
            # accumulate micro-batches
            pending = _accumulate(run, micro_batches, grad_accum)
            # optimizer step
            grad_norm = _optimizer_step(run, progress, grad_clip)
            # log and evaluate
            row = _log_row(run, progress, grad_norm, pending)
            evaluated = _evaluate_if_due(run, progress, row, evaluation, checkpoint_dir)
            progress.history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            # checkpoint
            saved = _checkpoint_if_due(run, progress, checkpoint_dir, checkpoint_every, len(order))
            if (evaluated or saved) and run.ranks.rank == 0:
                _log_step(desc, run.total, row, saved)
        if progress.index == len(order):
            progress.epoch, progress.index = progress.epoch + 1, 0
    bar.close()
    _finish(run, progress, evaluation, checkpoint_dir, gradient_checkpointing, desc)
    return progress.history


def _check_arguments(shard: ShardFn | None, evaluation: Evaluation | None, checkpoint_dir: Path | None) -> None:
    world = distributed.ranks().world
    if world > 1 and shard is None:
        raise ValueError(f"train_loop on {world} ranks needs a shard function to split each batch")
    if evaluation is not None and evaluation.keep == "best" and checkpoint_dir is None:
        raise ValueError("evaluation keep='best' needs a checkpoint_dir for the best weights")


def _setup(model: PreTrainedModel, batches: Sequence[Any], step_fn: StepFn, *, lr: float, epochs: int,
           max_steps: int, grad_accum: int, weight_decay: float, warmup_steps: int, schedule: str, bf16: bool | str,
           seed: int, gradient_checkpointing: bool, strategy: str, shard: ShardFn | None) -> _Run:
    """The step wrapped for the ranks (``distributed.wrap``), AdamW and its schedule over the run's steps."""
    r = distributed.ranks()
    device = next(model.parameters()).device
    bf16 = models.resolve_bf16(bf16, device)
    torch.manual_seed(seed)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    runner = distributed.wrap(_Step(model, step_fn), device, strategy, bf16)
    runner.train()
    steps_per_epoch = math.ceil(len(batches) / grad_accum)
    total = max_steps if max_steps > 0 else steps_per_epoch * epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    fingerprint = {"batches": len(batches), "total_steps": total, "grad_accum": grad_accum, "seed": seed}
    return _Run(model, runner, params, optimizer, scheduler, autocast, device, r, shard, total, fingerprint)


def _resume(run: _Run, checkpoint_dir: Path | None, desc: str) -> _Progress:
    """The progress of the ``last.pt`` in ``checkpoint_dir``, its weights, optimizer, schedule and RNG
    loaded; a fresh start without one."""
    saved = checkpoint.load_last(checkpoint_dir, run.fingerprint) if checkpoint_dir is not None else None
    if saved is None:
        return _Progress()
    distributed.load_full_state(run.model, saved["model"], run.optimizer, saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    checkpoint.set_rng_state(saved["rng"], run.device)
    position = saved["position"]
    progress = _Progress(saved["history"], saved["best"], position["step"], position["epoch"], position["index"])
    log.info("%s: resumed at step %d of %d from %s", desc, progress.step, run.total, checkpoint_dir / checkpoint.LAST)
    return progress


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(seed + epoch).shuffle(order)
    return order


def _next_batches(batches: Sequence[Any], order: list[int], progress: _Progress, grad_accum: int) -> list[Any]:
    chosen = [batches[i] for i in order[progress.index:progress.index + grad_accum]]
    progress.index += len(chosen)
    return chosen


def _split(run: _Run, batch: Any) -> tuple[Any, int, int]:
    """This rank's part of ``batch`` on its device, the examples in the part and in the whole batch."""
    part, count, size = run.shard(batch, run.ranks.rank, run.ranks.world) if run.shard is not None else (batch, 1, 1)
    return to_device(part, run.device), count, size


def _accumulate(run: _Run, micro_batches: list[Any], grad_accum: int) -> list[dict[str, float]]:
    """Forward and backward of each micro-batch, gradients adding up; the loss and metrics of each
    (means over all ranks' examples), with its real tokens and padded positions."""
    pending = []
    for i, batch in enumerate(micro_batches):
        part, n, size = _split(run, batch)
        with distributed.no_sync(run.runner, i == len(micro_batches) - 1), run.autocast:
            loss, metrics = run.runner(part)
            (loss * (run.ranks.world * n / size / grad_accum)).backward()
        tokens, padded = padding(batch)
        pending.append({**distributed.weighted_mean({k: n * v for k, v in {"loss": loss.item(), **metrics}.items()}, n),
                        "tokens": tokens, "padded": padded})
    return pending


def _optimizer_step(run: _Run, progress: _Progress, grad_clip: float) -> torch.Tensor:
    """Clip, step the optimizer and the schedule; the gradient norm before clipping."""
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, grad_clip) if grad_clip > 0 else torch.tensor(0.0)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    progress.step += 1
    return grad_norm


def _log_row(run: _Run, progress: _Progress, grad_norm: torch.Tensor, pending: list[dict[str, float]]) -> dict[str, float]:
    tokens, padded = sum(p.pop("tokens") for p in pending), sum(p.pop("padded") for p in pending)
    row = {"step": progress.step, "epoch": progress.epoch, "lr": run.scheduler.get_last_lr()[0],
           "grad_norm": float(grad_norm)}
    row.update({k: sum(p[k] for p in pending) / len(pending) for k in pending[0]})
    row.update(tokens=tokens, padding_share=padded / max(tokens + padded, 1.0))
    return row


def _evaluate_if_due(run: _Run, progress: _Progress, row: dict[str, float], evaluation: Evaluation | None,
                     checkpoint_dir: Path | None) -> bool:
    """Held-out evaluation into ``row`` every ``evaluation.every`` steps and at the last; a new best is
    tracked, its weights saved with ``keep="best"``. Whether it evaluated."""
    if evaluation is None or not (progress.step % evaluation.every == 0 or progress.step == run.total):
        return False
    row.update(held_out.evaluate(run.runner, evaluation, lambda batch: _split(run, batch), run.autocast))
    if evaluation.better(row[evaluation.metric], progress.best["value"] if progress.best else None):
        progress.best = {"step": progress.step, "value": row[evaluation.metric]}
        if evaluation.keep == "best":
            weights, _ = distributed.full_state(run.model)  # on every rank: FSDP gathers the shards
            if run.ranks.rank == 0:
                checkpoint.save_best(checkpoint_dir, weights)
    return True


def _checkpoint_if_due(run: _Run, progress: _Progress, checkpoint_dir: Path | None, checkpoint_every: int,
                       epoch_length: int) -> bool:
    """``last.pt`` every ``checkpoint_every`` steps and at the last. Whether it saved one."""
    if not (checkpoint_dir is not None and checkpoint_every > 0
            and (progress.step % checkpoint_every == 0 or progress.step == run.total)):
        return False
    weights, optimizer_state = distributed.full_state(run.model, run.optimizer)  # on every rank, as above
    if run.ranks.rank == 0:
        p = progress
        position = {"step": p.step, "epoch": p.epoch, "index": p.index} if p.index < epoch_length else \
            {"step": p.step, "epoch": p.epoch + 1, "index": 0}
        checkpoint.save_last(checkpoint_dir, model_state=weights, optimizer_state=optimizer_state,
                             scheduler=run.scheduler, position=position, history=p.history, best=p.best,
                             fingerprint=run.fingerprint, device=run.device)
    return True


def _log_step(desc: str, total: int, row: dict[str, float], saved: bool) -> None:
    log.info("%s: step %d/%d, %s%s", desc, row["step"], total,
             ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k == "loss" or k.startswith("eval_")),
             "; checkpoint saved" if saved else "")


def _finish(run: _Run, progress: _Progress, evaluation: Evaluation | None, checkpoint_dir: Path | None,
            gradient_checkpointing: bool, desc: str) -> None:
    """The best weights back in the model with ``keep="best"``; gradient checkpointing off; eval mode."""
    best = progress.best
    if evaluation is not None and evaluation.keep == "best" and best is not None:
        distributed.barrier()
        distributed.load_full_state(run.model, checkpoint.load_best(checkpoint_dir))
        log.info("%s: kept step %d (%s %.4f)", desc, best["step"], evaluation.metric, best["value"])
    if gradient_checkpointing:
        run.model.gradient_checkpointing_disable()
    run.model.eval()


@torch.no_grad()
def write_log(history: list[dict[str, float]], path: Path) -> None:
    """A training history (one dict per step) as a Parquet table."""
    pd.DataFrame(history).to_parquet(path, index=False)
