"""A tiny model folder whose weights are only a pickle checkpoint (``pytorch_model.bin``), as older
hub repositories ship them: what ``use_safetensors`` (on by default) must refuse to load."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from tiny import make_tiny_model


def make_bin_only_model(out: Path, **tiny: int) -> Path:
    """``tests/tiny.make_tiny_model``'s model with its ``model.safetensors`` replaced by the same
    tensors in ``pytorch_model.bin`` (transformers 5 saves safetensors only, so it is written here)."""
    make_tiny_model(out, **tiny)
    weights = out / "model.safetensors"
    torch.save(load_file(weights), out / "pytorch_model.bin")
    weights.unlink()
    return out
