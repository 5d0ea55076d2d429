"""Memory and time measurements shared by the training benchmarks (bench/train.py, bench/train_mfu.py)."""

from __future__ import annotations

import os

import torch


def peak_memory_start(device: str) -> int:
    """Resident (CPU) or allocated (GPU) bytes now, with the GPU's peak counter reset."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def cpu_seconds() -> float:
    """User + system CPU time of this process so far: unlike wall time, barely moved by other
    processes competing for the cores (OpenMP spin-waits still count)."""
    times = os.times()
    return times.user + times.system
