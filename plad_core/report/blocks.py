"""Report blocks (headings, paragraphs, tables, images, preformatted text) and their two renderings:
Markdown, whose images are links to ``plots/*.png`` beside it, and a self-contained HTML page that
embeds the same PNG bytes as base64 data URIs and needs nothing else to open. Both come from one
list of blocks, so they always say the same thing."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    align: Optional[list[str]] = None  # "l" or "r" per column; default: first left, rest right


@dataclass
class Image:
    name: str  # file name under plots/
    png: bytes
    alt: str


@dataclass
class Pre:
    text: str


Block = Union[Heading, Para, Table, Image, Pre]
Sections = tuple[list[Block], list[Block]]  # (report blocks, summary blocks) of a report section


# --- rendering ---------------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Para):
            out.append(block.text)
        elif isinstance(block, Table):
            align = block.align or ["l"] + ["r"] * (len(block.header) - 1)
            out.append("\n".join(
                ["| " + " | ".join(_md_cell(h) for h in block.header) + " |",
                 "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
                + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]))
        elif isinstance(block, Image):
            out.append(f"![{block.alt}](plots/{block.name})")
        elif isinstance(block, Pre):
            out.append(f"```\n{block.text}\n```")
    return "\n\n".join(out) + "\n"


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; background: #fff; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .35em .6em; vertical-align: top; }
th { background: #f3f3f3; }
td.r { text-align: right; white-space: nowrap; }
img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: .8em; white-space: pre-wrap; font-size: .85em; }
"""


def render_html(blocks: Sequence[Block], title: str) -> str:
    out = ["<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">",
           f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>"]
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            out.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Table):
            align = block.align or ["l"] + ["r"] * (len(block.header) - 1)
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in block.header)
            body = "".join("<tr>" + "".join(f"<td class=\"{a}\">{html.escape(str(c))}</td>" for a, c in zip(align, row))
                           + "</tr>" for row in block.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, Image):
            data = base64.b64encode(block.png).decode("ascii")
            out.append(f"<p><img src=\"data:image/png;base64,{data}\" alt=\"{html.escape(block.alt)}\"></p>")
        elif isinstance(block, Pre):
            out.append(f"<pre>{html.escape(block.text)}</pre>")
    out.append("</body>\n</html>\n")
    return "\n".join(out)


def write_pages(out: Path, blocks: Sequence[Block], title: str) -> None:
    """``report.md`` with its images in ``plots/``, and the self-contained ``report.html``, in ``out``."""
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for block in blocks:
        if isinstance(block, Image):
            (plots / block.name).write_bytes(block.png)
    (out / "report.md").write_text(render_markdown(blocks))
    (out / "report.html").write_text(render_html(blocks, title))
