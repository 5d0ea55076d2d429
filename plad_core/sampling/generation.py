"""The type every sampling backend returns, and the stop-string cut they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass
class Generation:
    """One sampled output: its prompt and sample index, text, token counts and why it ended."""

    prompt_index: int
    sample_index: int
    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest of the ``stop`` strings, and whether one was found."""
    cuts = [text.index(s) for s in stop if s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)
