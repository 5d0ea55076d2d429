"""The evaluate report's pair-curation section, from the curate_pairs manifest's stats
(``plad_core.stages.curate.run_curate_pairs``): pairs built, dropped per reason, kept, and the mean
repeated word-3-gram share of y_T and y_S before and after curation."""

from __future__ import annotations

from typing import Any, Optional

from plad_core.report.blocks import Block, Heading, Para, Sections, Table

REASON_TEXT = {
    "degenerate": "y_T's repeated word-3-gram share above pairs.curate.max_repeat_share ({max_repeat_share})",
    "student_agrees": "the SFT student already ranks y_T above y_S by more than pairs.curate.student_margin "
                      "({student_margin} nats per token)",
}


def _share(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _truncated_text(stats: dict[str, Any]) -> str:
    t = stats.get("truncated") or {}
    if t.get("policy") == "drop":
        return (f"; build_pairs had already dropped {t.get('dropped_by_build_pairs', 0)} pair(s) with a side cut at "
                "max_new_tokens (pairs.truncated=drop, not counted again here)")
    return "; pairs with a side cut at max_new_tokens are kept (pairs.truncated=keep)"


def curation_blocks_from_stats(stats: Optional[dict[str, Any]]) -> Sections:
    """(report blocks, summary blocks) of the section; none when ``stats`` is None (no curate_pairs upstream)."""
    if not stats:
        return [], []
    settings = stats.get("settings", {})
    dropped = stats["dropped"]
    before, after = stats["repeat_share"]["before"], stats["repeat_share"]["after"]
    parts = [f"{n} as {reason} ({REASON_TEXT.get(reason, reason).format(**settings)})" for reason, n in dropped.items()]
    if "student_agrees" not in dropped:
        parts.append("student_agrees is off (pairs.curate.student_margin: null)")
    line = (f"Pair curation: {stats['built']} pairs built, {sum(dropped.values())} dropped, {stats['kept']} kept for "
            f"training. Mean repeated word-3-gram share (x100) of y_T {_share(before['chosen'])} → "
            f"{_share(after['chosen'])}, of y_S {_share(before['rejected'])} → {_share(after['rejected'])}.")
    rows = [["built", str(stats["built"]), _share(before["chosen"]), _share(before["rejected"])],
            *[[f"dropped: {reason}", str(n), "", ""] for reason, n in dropped.items()],
            ["kept", str(stats["kept"]), _share(after["chosen"]), _share(after["rejected"])]]
    report: list[Block] = [
        Heading("Pair curation"),
        Para(f"The curate_pairs stage dropped, of {stats['built']} pairs, " + "; ".join(parts)
             + _truncated_text(stats) + ". The dropped pairs and their reasons are in its dropped.parquet."),
        Table(["pairs", "n", "y_T repeat share (x100)", "y_S repeat share (x100)"], rows), Para(line)]
    return report, [Para(line)]


def curation_blocks(metrics: dict[str, Any]) -> Sections:
    """The section of ``metrics["curation"]`` (the curate_pairs stats the evaluate stage copies into
    metrics.json), in the form of the report's other sections: ``build_blocks`` lists it beside them."""
    return curation_blocks_from_stats(metrics.get("curation"))
