"""Held-out evaluation inside ``loop.train_loop``: its settings (``Evaluation``) and one pass over the
held-out batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Sequence

import torch

from plad_core.training import distributed


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


def evaluate(runner: torch.nn.Module, evaluation: Evaluation, split: Callable[[Any], tuple[Any, int, int]],
             autocast: ContextManager[Any]) -> dict[str, float]:
    """``eval_<name>`` means of the step's loss and metrics over every held-out example of every rank, without
    gradients, in eval mode. ``split(batch)``: this rank's part, its examples and the batch's."""
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
    return distributed.weighted_mean(sums, count)
