# shim: removed after the layout merge
"""Reports: blocks rendered as Markdown and self-contained HTML, their plots and number formats, and the
evaluate, table and data-scale reports."""

from plad_core.report.evaluation import results_table, write_report  # noqa: F401
