"""Number formats and labels shared by every report and table: "–" marks a missing value."""

from __future__ import annotations

from typing import Any, Optional

SYSTEM_LABELS = {"teacher": "Teacher", "sft": "SFT", "plad": "PLaD"}
OPPONENT_LABELS = {"reference": "human reference", "sft": "SFT"}
METRIC_LABELS = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L",
                 "mean_output_tokens": "mean output tokens"}


def num_text(value: Optional[float], digits: int = 2, signed: bool = False) -> str:
    """``value`` with ``digits`` decimals, with its sign when ``signed``."""
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def ci_text(m: Optional[dict[str, Any]], name: str, digits: int = 2, signed: bool = False) -> str:
    """``m[name]`` and its 95% CI ``[m[name_low], m[name_high]]``, as ``num_text``."""
    if not m or m.get(name) is None:
        return "–"
    low, high = (num_text(m[f"{name}_{end}"], digits, signed) for end in ("low", "high"))
    return f"{num_text(m[name], digits, signed)} [{low}, {high}]"


def difference_text(p: Optional[dict[str, Any]]) -> str:
    """A paired comparison's (``stats.paired_bootstrap``) difference and its 95% CI, signed."""
    return "–" if not p else f"{p['difference']:+.2f} [{p['low']:+.2f}, {p['high']:+.2f}]"


def power_text(p: Optional[dict[str, Any]], rows: str = "dev rows", unit: str = "ROUGE-L") -> str:
    """A paired comparison's power: its n and the smallest difference it resolves (``mde``, 80% power,
    α = 0.05; ``plad_core.stats.min_detectable_difference``), and, when that exceeds a point, that
    these rows cannot show a 1-point effect."""
    if not p or p.get("mde") is None:
        return f"n = {p['n'] if p else 0} {rows}: too few to state the smallest difference they resolve"
    tail = f"; {p['n']} rows cannot show a 1-point effect" if p["mde"] > 1 else ""
    return (f"n = {p['n']} {rows}: with this spread, a difference smaller than ±{p['mde']:.2f} {unit} cannot be "
            f"resolved (80% power, α = 0.05){tail}")


def mde_text(p: Optional[dict[str, Any]]) -> str:
    """A paired comparison's minimum detectable difference, ± (see ``power_text``)."""
    return "–" if not p or p.get("mde") is None else f"±{p['mde']:.2f}"


def n_mde_text(p: Optional[dict[str, Any]]) -> str:
    """A paired comparison's n and minimum detectable difference, short: "n = 32, MDE ±2.10"."""
    return "–" if not p else f"n = {p['n']}, MDE {mde_text(p)}"


def p_text(p_value: float, n_resamples: int) -> str:
    """A bootstrap p-value of 0 only says p < 1/n_resamples."""
    return f"< {1 / n_resamples:.2g}" if p_value == 0 else f"{p_value:.3f}"


def delta_text(p: Optional[dict[str, Any]], n_resamples: int) -> str:
    """A paired comparison as ``difference_text`` and its p-value (``p_text``)."""
    return f"{difference_text(p)}, p {p_text(p['p_value'], n_resamples)}" if p else "–"


def pct_text(value: Optional[float]) -> str:
    """A percentage with one decimal."""
    return "–" if value is None else f"{value:.1f}%"


def system_label(system: str) -> str:
    """The name a report shows for ``system`` (a trained system's own name, or Teacher, SFT, PLaD)."""
    return SYSTEM_LABELS.get(system, system)
