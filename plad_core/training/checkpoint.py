"""Training checkpoints for exact resume, written atomically.

``last.pt`` holds everything ``loop.train_loop`` needs to go on as if it had never stopped: the
model and optimizer state (whole tensors keyed by parameter name, as ``distributed.full_state`` gathers
them, so one process, DDP and FSDP write and resume the same files), the scheduler, the Python and torch RNG states, the data position
(epoch and index in that epoch's shuffled order; checkpoints fall on optimizer-step boundaries, so
no gradient accumulation is ever pending), the log so far, the best evaluation so far and a
fingerprint of the run it belongs to. ``best.pt`` holds the weights of the best evaluated step.
Each is written to a temporary file, flushed to disk and renamed over the old one, so a crash
leaves either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Optional

import torch

CHECKPOINTS = "checkpoints"  # train_loop's folder in a stage's work dir, which survives a crash (exact resume)
LAST = "last.pt"
BEST = "best.pt"
FORMAT = 2  # 2: the optimizer state is keyed by parameter name (1 keyed it by position)


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_last(folder: Path, *, model_state: dict[str, Any], optimizer_state: dict[str, Any], scheduler: Any,
              position: dict[str, int], history: list[dict[str, float]], best: Optional[dict[str, float]],
              fingerprint: dict[str, Any], device: torch.device) -> Path:
    """``model_state`` and ``optimizer_state``: ``distributed.full_state`` of the model and its optimizer."""
    path = folder / LAST
    save_atomic({"format": FORMAT, "model": model_state, "optimizer": optimizer_state,
                 "scheduler": scheduler.state_dict(), "rng": rng_state(device), "position": position,
                 "history": history, "best": best, "fingerprint": fingerprint}, path)
    return path


def load_last(folder: Path, fingerprint: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The checkpoint in ``folder`` (on the CPU), or None when there is none.

    A checkpoint of another run (other batches, steps, accumulation or seed) is an error, not
    something to resume from.
    """
    path = folder / LAST
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint in format {state.get('format', 1)} of an older plad, this one reads "
                         f"format {FORMAT}; remove it to start over")
    if state["fingerprint"] != fingerprint:
        raise ValueError(f"{path}: checkpoint of another run ({state['fingerprint']}), this run is {fingerprint}; "
                         f"remove it to start over")
    return state


def save_best(folder: Path, model_state: dict[str, Any]) -> None:
    """``model_state``: ``distributed.full_state`` of the model."""
    save_atomic(model_state, folder / BEST)


def load_best(folder: Path) -> dict[str, Any]:
    """The weights ``save_best`` wrote (on the CPU), for ``distributed.load_full_state``."""
    return torch.load(folder / BEST, map_location="cpu", weights_only=True)
