"""Data parallelism for ``train.train_loop`` under ``torchrun``: ranks, batch shards, metric means.

Every rank runs the same loop over the same global batches; each takes its share of a batch
(``shard_pairs``), weights its loss by its share of the examples, and DDP averages the gradients,
so a step's gradient is that of the mean loss over the whole global batch, as in one process.
Nothing here starts processes: ``plad_core.launch`` does, and ``plad_core.calibrate_worker`` is
what each rank runs.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, ContextManager

import torch
import torch.distributed as dist

# (global batch, rank, world) -> (the rank's part, examples in the part, examples in the batch)
ShardFn = Callable[[Any, int, int], tuple[Any, int, int]]

PER_PAIR_KEY = "chosen_score"  # one value per pair in every pair batch: it tells the pair count B


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1


def ranks() -> Ranks:
    """This process's rank and the world size (0 and 1 outside an initialised process group)."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def init_from_env(cuda: bool, timeout_s: float = 1800) -> torch.device:
    """Join the process group ``torchrun`` describes in the environment (nccl on GPUs, gloo on CPUs)
    and return this rank's device (``cuda:LOCAL_RANK``, or the CPU)."""
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timedelta(seconds=timeout_s), device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    return device


def shard_pairs(batch: dict[str, Any], rank: int, world: int) -> tuple[dict[str, Any], int, int]:
    """Rank ``rank``'s contiguous share of the pairs in a pair batch (``pair_training.pair_batches``).

    A pair batch of B pairs holds tensors of B rows (one per pair, such as ``chosen_score``) and of
    2B rows (the chosen sequences, then the rejected ones); a 2B-row tensor is cut in both halves.
    Ranks get B // world pairs, the first B % world ranks one more. A rank left with none gets the
    first pair as a stand-in that counts 0 examples: it still runs forward and backward, which
    every DDP all-reduce needs, but its loss is weighted by 0.
    """
    if PER_PAIR_KEY not in batch:
        raise ValueError(f"a pair batch needs '{PER_PAIR_KEY}' (one value per pair) to be split across ranks; "
                         f"it has {sorted(batch)}")
    pairs = int(batch[PER_PAIR_KEY].shape[0])
    base, extra = divmod(pairs, world)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    count = stop - start
    if count == 0:
        start, stop = 0, 1
    part: dict[str, Any] = {}
    for key, value in batch.items():
        rows = value.shape[0] if isinstance(value, torch.Tensor) and value.dim() > 0 else None
        if rows == pairs:
            part[key] = value[start:stop]
        elif rows == 2 * pairs:
            part[key] = torch.cat([value[start:stop], value[pairs + start:pairs + stop]])
        else:
            raise ValueError(f"pair batch entry '{key}' has {rows} rows; expected {pairs} (one per pair) or "
                             f"{2 * pairs} (chosen rows, then rejected rows)")
    return part, count, pairs


def weighted_mean(sums: dict[str, float], count: float) -> dict[str, float]:
    """``sums[k] / count`` with ``sums`` and ``count`` added up over all ranks first.

    Each rank passes the sum over its examples (a batch mean times its example count), so the
    result is the mean over every example of every rank, as one process would compute it.
    """
    if ranks().world > 1:
        packed = torch.tensor([*sums.values(), count], dtype=torch.float64)
        dist.all_reduce(packed)
        *values, count = packed.tolist()
        sums = dict(zip(sums, values))
    return {k: v / count for k, v in sums.items()}


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` in DistributedDataParallel when there are several ranks, else unchanged."""
    if ranks().world == 1:
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def no_sync(runner: torch.nn.Module, sync: bool) -> ContextManager[Any]:
    """Skip DDP's gradient all-reduce on micro-batches before the last of an accumulation step."""
    if sync or not isinstance(runner, torch.nn.parallel.DistributedDataParallel):
        return nullcontext()
    return runner.no_sync()


def barrier() -> None:
    if ranks().world > 1:
        dist.barrier()
