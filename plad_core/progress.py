"""A long stage's progress as a fraction of its steps, reported through a plain callback.

The library never imports Prefect: a caller that wants to show progress passes
``callback(fraction, message)`` (the flow's ``evaluate`` task updates a Prefect progress artifact
with it; see ``tasks/__init__.py``). Without a callback nothing is reported.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

ProgressCallback = Callable[[float, str], None]


class Steps:
    """Equal-weight named steps: step i at ``within`` (0..1) is fraction (i + within) / len(steps)."""

    def __init__(self, names: Sequence[str], callback: Optional[ProgressCallback]):
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"steps need distinct names, got {list(names)}")
        self.names, self.callback = list(names), callback

    def report(self, name: str, within: float = 0.0) -> None:
        if self.callback is not None:
            fraction = (self.names.index(name) + min(max(within, 0.0), 1.0)) / len(self.names)
            self.callback(fraction, f"{name} ({within:.0%})")

    def within(self, name: str) -> Callable[[float], None]:
        """``progress(fraction of this step)`` for code that reports its own progress (the judge)."""
        return lambda fraction: self.report(name, fraction)

    def done(self) -> None:
        if self.callback is not None:
            self.callback(1.0, "done")
