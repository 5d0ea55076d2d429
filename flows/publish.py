"""Publishing an experiment artifact's summary.md as a Prefect markdown artifact and in the run log."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from plad_core.artifacts import Artifact


def publish_summary(key: str, experiment: str, result: Artifact) -> None:
    """``result``'s summary.md as the markdown artifact ``key``, and in the log with its report's path."""
    summary = result.file("summary.md").read_text()
    create_markdown_artifact(key=key, markdown=summary,
                             description=f"experiment {experiment}: summary of {result.file('report.html')}")
    get_run_logger().info("%s (%s):\n%s", key, result.file("report.html"), summary)
