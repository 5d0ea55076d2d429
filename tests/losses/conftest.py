from types import SimpleNamespace

import numpy as np
import pytest
import torch


@pytest.fixture
def rand():
    """16 pairs of random float64 inputs and their float32 tensors."""
    rng = np.random.default_rng(0)
    arrays = {name: rng.normal(-30, 10, 16) for name in ("pc", "pr", "rc", "rr")}
    arrays |= {name: rng.normal(-1.5, 0.7, 16) for name in ("ac", "ar")}
    arrays |= {"sc": rng.uniform(0, 1, 16), "sr": rng.uniform(0, 1, 16),
               "lc": rng.integers(1, 60, 16).astype(float), "lr": rng.integers(1, 60, 16).astype(float)}
    tensors = {name: torch.tensor(a, dtype=torch.float32) for name, a in arrays.items()}
    return SimpleNamespace(np=SimpleNamespace(**arrays), pt=SimpleNamespace(**tensors))
