"""What every judge returns (a ``Verdict`` per (prefix, suffix) request, the ``Judge`` protocol) and
the judge behind an OpenAI-compatible endpoint, whose verdict is read from its text.

``OpenAIJudge`` asks ``plad_core.sampling.openai_api`` (greedy, ``VERDICT_TOKENS`` new tokens) and
parses the answer with ``parse_verdict``; ``plad_core.evaluation.judge`` holds the local judge and
turns verdicts into win rates.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence

from plad_core.sampling import openai_api

VERDICT_TOKENS = 8       # room for "A", "Summary A" or "**A**" and little else
ProgressFn = Callable[[float], None]


@dataclass(frozen=True)
class Verdict:
    choice: Optional[str]           # "A", "B", or None when the answer names neither
    logp_a: float = math.nan        # hf: log P(next token = "A"); NaN for text verdicts
    logp_b: float = math.nan
    raw: str = ""                   # openai: the judge's text


class Judge(Protocol):
    def verdicts(self, requests: Sequence[tuple[str, str]], progress: Optional[ProgressFn] = None) -> list[Verdict]:
        """One verdict per (prefix, suffix) request, in order; ``progress(fraction done)`` as it goes."""


def parse_verdict(text: str) -> Optional[str]:
    """The first standalone "A" or "B" in the judge's answer ("B", "Summary A.", "**A**"), else None."""
    found = re.search(r"(?<![A-Za-z])([AB])(?![A-Za-z])", text)
    return found.group(1) if found else None


class OpenAIJudge:
    """Greedy text verdicts from an OpenAI-compatible endpoint (``api.mode`` chat or completions)."""

    def __init__(self, settings: openai_api.ApiSettings, seed: int = 0):
        self.settings, self.seed = settings, seed

    def verdicts(self, requests: Sequence[tuple[str, str]], progress: Optional[ProgressFn] = None) -> list[Verdict]:
        chunk = 4 * self.settings.concurrency  # requests per progress report, enough to keep the endpoint busy
        out: list[Verdict] = []
        for start in range(0, len(requests), chunk):
            prompts = [p + s for p, s in requests[start:start + chunk]]
            gens = openai_api.generate(prompts, self.settings, n=1, temperature=0.0, top_p=1.0,
                                       max_new_tokens=VERDICT_TOKENS, seed=self.seed + start, desc="judge",
                                       where="eval.judge.api")
            out += [Verdict(parse_verdict(g.text), raw=g.text) for g in gens]
            if progress:
                progress(len(out) / len(requests))
        return out
