"""TL;DR rows: loading with precise errors, a deterministic split by id, and prompt rendering."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import pyarrow as pa

log = logging.getLogger("plad.data")

TLDR_FIELDS = ("id", "subreddit", "title", "post", "summary")
SPLITS = ("labeled", "unlabeled", "dev")

ROWS_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("subreddit", pa.string()),
    pa.field("title", pa.string()),
    pa.field("post", pa.string()),
    pa.field("summary", pa.string()),
    pa.field("split", pa.string(), nullable=False),
])


class DataError(ValueError):
    """Input data that cannot be used, with the file, line and field that caused it."""


@dataclass
class LoadedRows:
    rows: list[dict[str, Any]]
    dropped_empty: int


def _check_row(row: Any, source: str, line: int) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(f"{source}:{line}: expected a JSON object, got {type(row).__name__}")
    for name in TLDR_FIELDS:
        if name not in row or row[name] is None:
            raise DataError(f"{source}:{line}: missing field '{name}'")
        if not isinstance(row[name], str):
            raise DataError(f"{source}:{line}: field '{name}' must be a string, got {type(row[name]).__name__}")
    return {name: row[name] for name in TLDR_FIELDS}


def _read_records(path: str, fmt: str) -> list[tuple[int, Any]]:
    """(line number, record) pairs; line numbers are 1-based file lines for JSONL, row+1 for Parquet."""
    kind = fmt if fmt != "auto" else ("parquet" if path.endswith(".parquet") else "jsonl")
    if kind == "parquet":
        return [(i + 1, rec) for i, rec in enumerate(pd.read_parquet(path).to_dict("records"))]
    if kind != "jsonl":
        raise DataError(f"{path}: unknown data format '{fmt}' (use auto, jsonl or parquet)")
    if "://" in path:  # hf://datasets/<id>/<file>, s3://... through fsspec
        import fsspec

        with fsspec.open(path, "rt", encoding="utf-8") as fh:
            text = fh.read()
    else:
        if not Path(path).is_file():
            raise DataError(f"{path}: data file not found (set data.path)")
        text = Path(path).read_text(encoding="utf-8")
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: malformed JSON ({err.msg} at column {err.colno})") from None
    return records


def load_rows(path: str, fmt: str = "auto") -> LoadedRows:
    """Validated TL;DR rows from a JSONL or Parquet file (local path or fsspec URL such as
    ``hf://datasets/<owner>/<name>/<file>``). Rows with an empty post are dropped and counted."""
    rows, dropped, seen = [], 0, {}
    for line, record in _read_records(path, fmt):
        row = _check_row(record, path, line)
        if row["id"] in seen:
            raise DataError(f"{path}:{line}: field 'id' repeats '{row['id']}' first seen on line {seen[row['id']]}")
        seen[row["id"]] = line
        if not row["post"].strip():
            dropped += 1
            continue
        rows.append(row)
    if dropped:
        log.warning("%s: dropped %d rows with an empty post", path, dropped)
    return LoadedRows(rows, dropped)


def split_rank(row_id: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{row_id}".encode()).hexdigest()


def split_rows(rows: Sequence[dict[str, Any]], sizes: dict[str, int], salt: str) -> pd.DataFrame:
    """Assign rows to labeled / unlabeled / dev by the hash of their id.

    Ordering by hash makes each row's split depend only on its id, the salt and the sizes, never on
    file order, so appending rows to the file leaves earlier assignments mostly intact.
    """
    wanted = sum(sizes.values())
    if wanted > len(rows):
        raise DataError(f"split sizes {sizes} need {wanted} rows but the data has {len(rows)}")
    ordered = sorted(rows, key=lambda r: split_rank(r["id"], salt))
    out, start = [], 0
    for name in SPLITS:
        for row in ordered[start:start + sizes[name]]:
            out.append({**row, "split": name})
        start += sizes[name]
    return pd.DataFrame(out, columns=[f.name for f in ROWS_SCHEMA])


def fewshot_examples(labeled: pd.DataFrame, k: int) -> list[dict[str, Any]]:
    """The k labeled rows with the shortest posts: worked examples that cost the fewest prompt tokens."""
    if k <= 0:
        return []
    chosen = labeled.assign(_len=labeled["post"].str.len()).sort_values(["_len", "id"]).head(k)
    return chosen.drop(columns="_len").to_dict("records")


def render_prompt(row: dict[str, Any], template: str, examples: Sequence[dict[str, Any]], separator: str) -> str:
    """Fill ``template`` for ``row``; each worked example is its filled template plus ' ' + summary."""
    shots = [template.format(**ex) + " " + ex["summary"].strip() for ex in examples]
    return separator.join([*shots, template.format(**row)])


def build_prompts(rows: pd.DataFrame, tokenizer: Any, template: str, examples: Sequence[dict[str, Any]],
                  separator: str, max_prompt_tokens: int) -> tuple[list[str], int]:
    """Rendered prompts, the post truncated by tokens so the prompt fits ``max_prompt_tokens``.

    Returns the prompts and the number of rows whose post had to be truncated.
    """
    prompts, truncated = [], 0
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    for row in rows.to_dict("records"):
        prompt = render_prompt(row, template, examples, separator)
        excess = count(prompt) - max_prompt_tokens
        if excess > 0:
            truncated += 1
            post_ids = tokenizer(row["post"], add_special_tokens=False)["input_ids"]
        while excess > 0:  # re-tokenising the decoded cut can shift a token, hence the loop
            if len(post_ids) <= excess:
                raise DataError(f"row {row['id']}: field 'post' cannot be truncated enough: the template and "
                                f"examples alone exceed prompt.max_tokens={max_prompt_tokens}")
            post_ids = post_ids[:len(post_ids) - excess]
            prompt = render_prompt({**row, "post": tokenizer.decode(post_ids)}, template, examples, separator)
            excess = count(prompt) - max_prompt_tokens
        prompts.append(prompt)
    return prompts, truncated
