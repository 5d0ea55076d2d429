"""Data parallelism for ``loop.train_loop`` under ``torchrun``: ranks, batch shards, metric means.

Every rank runs the same loop over the same global batches; each takes its share of a batch
(``shard_pairs``), weights its loss by its share of the examples, and DDP (or FSDP's reduce-scatter)
averages the gradients, so a step's gradient is that of the mean loss over the whole global batch, as
in one process. Under FSDP (``wrap`` with strategy ``fsdp``) each rank holds only its shard of the
weights, gradients and optimizer state; ``full_state`` gathers them into the one-process layout that
checkpoints and saved models use under every strategy, and ``load_full_state`` loads that layout back.
Nothing here starts processes: ``torchrun.run`` does, and ``torchrun.main`` is what each rank
runs.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, ContextManager, Iterator, Optional

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from plad_core.config import ConfigError

# (global batch, rank, world) -> (the rank's part, examples in the part, examples in the batch)
ShardFn = Callable[[Any, int, int], tuple[Any, int, int]]

PER_PAIR_KEY = "chosen_score"  # one value per pair in every pair batch: it tells the pair count B
STRATEGIES = ("ddp", "fsdp")  # train.launch.strategy


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
    """Rank ``rank``'s contiguous share of the pairs in a pair batch (``batches.pair_batches``).

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


def check_strategy(strategy: str) -> None:
    """A clear error for an unknown ``train.launch.strategy``."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"train.launch.strategy='{strategy}' is not known; choose one of {', '.join(STRATEGIES)}")


def wrap(module: torch.nn.Module, device: torch.device, strategy: str = "ddp", bf16: bool = False) -> torch.nn.Module:
    """``module`` ready for several ranks: in DistributedDataParallel (``ddp``) or sharded with FSDP2
    (``fsdp``, ``fully_shard``: each decoder layer, then ``module`` itself as the root holding the rest,
    such as the embeddings and the LM head); unchanged on one rank. ``module`` is changed in place under
    FSDP (its parameters become DTensor shards). With ``bf16`` on CUDA, FSDP all-gathers the weights in
    bf16 and reduces the gradients in float32 (``MixedPrecisionPolicy``); the sharded weights and the
    optimizer stay float32."""
    check_strategy(strategy)
    if ranks().world == 1:
        return module
    if strategy == "fsdp":
        mixed = {"param_dtype": torch.bfloat16, "reduce_dtype": torch.float32} if bf16 and device.type == "cuda" else {}
        for layer in _decoder_layers(module):
            fully_shard(layer, mp_policy=MixedPrecisionPolicy(**mixed))
        # the root's inputs are whole batches: their float columns (quality scores, stored log-probs) keep their dtype
        return fully_shard(module, mp_policy=MixedPrecisionPolicy(**mixed, cast_forward_inputs=False))
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def _decoder_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of the transformers models in ``module``: the modules whose class the model
    names in ``_no_split_modules`` (``LlamaDecoderLayer`` for Llama), FSDP's unit of sharding."""
    names = {name for m in module.modules() for name in (getattr(m, "_no_split_modules", None) or ())}
    layers = [m for m in module.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(f"train.launch.strategy=fsdp shards each decoder layer, found by the class names in a "
                         f"transformers model's _no_split_modules; {type(module).__name__} holds none "
                         f"(names: {sorted(names) or 'none given'}): use train.launch.strategy=ddp")
    return layers


def no_sync(runner: torch.nn.Module, sync: bool) -> ContextManager[Any]:
    """Skip the gradient reduction (DDP's all-reduce, FSDP's reduce-scatter) on micro-batches before the
    last of an accumulation step: the gradients add up locally and are reduced once, on the last."""
    if sync:
        return nullcontext()
    if isinstance(runner, torch.nn.parallel.DistributedDataParallel):
        return runner.no_sync()
    if isinstance(runner, FSDPModule):
        return _fsdp_no_sync(runner)
    return nullcontext()


@contextmanager
def _fsdp_no_sync(runner: FSDPModule) -> Iterator[None]:
    runner.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        runner.set_requires_gradient_sync(True)


# Whole tensors on the CPU, gathered to rank 0 (the other ranks get empty dicts): the one-process layout.
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state(model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None) -> tuple[dict, dict]:
    """``model``'s and ``optimizer``'s state (``{}`` without one) as one process has them: whole tensors
    on the CPU, keyed by parameter name (the optimizer's state too, so it loads under any strategy).

    Every rank must call it: under FSDP it all-gathers the shards. Rank 0 gets the state; under several
    ranks the others get empty dicts. Tied parameters (an LM head that is the input embedding) share one
    tensor, as in ``model.state_dict()``, so a saved model holds them once."""
    if optimizer is None:
        weights, optimizer_state = get_model_state_dict(model, options=_FULL), {}
    else:
        weights, optimizer_state = get_state_dict(model, optimizer, options=_FULL)
    first: dict[int, str] = {}  # parameter -> its first name
    for name, param in model.named_parameters(remove_duplicate=False):
        if name in weights:
            weights[name] = weights[first.setdefault(id(param), name)]
    return weights, optimizer_state


def load_full_state(model: torch.nn.Module, model_state: dict, optimizer: Optional[torch.optim.Optimizer] = None,
                    optimizer_state: Optional[dict] = None) -> None:
    """Load a ``full_state`` (whole tensors, on every rank) into ``model`` and ``optimizer``, under any
    strategy: under FSDP each rank keeps its shard of each tensor."""
    options = StateDictOptions(full_state_dict=True)
    if optimizer is None:
        set_model_state_dict(model, model_state, options=options)
    else:
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state,
                       options=options)


def barrier() -> None:
    if ranks().world > 1:
        dist.barrier()
