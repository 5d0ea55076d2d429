"""Publishing an experiment artifact's summary.md as a Prefect markdown artifact, named in the run log."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from plad_core.artifacts import Artifact


def publish_summary(key: str, experiment: str, result: Artifact) -> None:
    """``result``'s summary.md as the markdown artifact ``key``; the log names it and the report.

    The summary itself is not logged: ``plad scale``/``plad table`` print it once at the end, and the
    Prefect UI shows the artifact.
    """
    create_markdown_artifact(key=key, markdown=result.file("summary.md").read_text(),
                             description=f"experiment {experiment}: summary of {result.file('report.html')}")
    get_run_logger().info("summary: Prefect artifact '%s'; report: %s", key, result.file("report.html"))
