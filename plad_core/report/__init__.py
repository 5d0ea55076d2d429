"""Reports: blocks rendered as Markdown and self-contained HTML, their plots and number formats, and the
evaluate, table and data-scale reports."""
