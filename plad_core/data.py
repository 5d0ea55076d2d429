"""Task rows (TL;DR posts, HH dialogues): loading with precise errors, a deterministic split by id,
and prompt rendering."""

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

SPLITS = ("labeled", "unlabeled", "dev")


@dataclass(frozen=True)
class TaskSpec:
    """What a task's input rows look like.

    ``fields`` are required strings (prompt templates may use any of them); ``reference`` holds the
    human output (SFT target, ROUGE reference); ``body`` is the long field cut to fit the prompt
    budget, from the end (``keep="start"``, a post) or from the start (``keep="end"``, a dialogue
    whose last turn must survive). ``optional`` fields are kept (nullable) when a row has them and
    are not prompt fields: HH's human ``rejected`` reply, a known-worse answer for the judge's
    validity check (``plad_core.evaluation.judge_validity``).
    """
    fields: tuple[str, ...]
    reference: str
    body: str
    keep: str
    optional: tuple[str, ...] = ()


TASKS = {
    "tldr": TaskSpec(("id", "subreddit", "title", "post", "summary"), reference="summary", body="post", keep="start"),
    "hh": TaskSpec(("id", "prompt", "chosen"), reference="chosen", body="prompt", keep="end",
                   optional=("rejected",)),
}


def task_spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise DataError(f"data.task='{task}' is unknown; tasks: {', '.join(TASKS)}")
    return TASKS[task]


def rows_schema(task: str) -> pa.Schema:
    """Prepared rows: the task's fields, ``reference`` (the human output), its optional fields (null
    where a row has none) and ``split``."""
    spec = task_spec(task)
    fields = [pa.field(name, pa.string(), nullable=False) for name in spec.fields]
    return pa.schema([*fields, pa.field("reference", pa.string(), nullable=False),
                      *[pa.field(name, pa.string(), nullable=True) for name in spec.optional],
                      pa.field("split", pa.string(), nullable=False)])


class DataError(ValueError):
    """Input data that cannot be used, with the file, line and field that caused it."""


@dataclass
class LoadedRows:
    rows: list[dict[str, Any]]
    dropped_empty: int


def _check_row(row: Any, spec: TaskSpec, source: str, line: int) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(f"{source}:{line}: expected a JSON object, got {type(row).__name__}")
    for name in spec.fields:
        if name not in row or row[name] is None:
            raise DataError(f"{source}:{line}: missing field '{name}'")
        if not isinstance(row[name], str):
            raise DataError(f"{source}:{line}: field '{name}' must be a string, got {type(row[name]).__name__}")
    optional = {name: _optional(row, name, source, line) for name in spec.optional}
    return {name: row[name] for name in spec.fields} | {"reference": row[spec.reference].strip()} | optional


def _optional(row: dict[str, Any], name: str, source: str, line: int) -> str | None:
    """An optional field's stripped text; None when absent, null or NaN (a Parquet null)."""
    value = row.get(name)
    if value is None or (isinstance(value, float) and value != value):
        return None
    if not isinstance(value, str):
        raise DataError(f"{source}:{line}: field '{name}' must be a string or absent, got {type(value).__name__}")
    return value.strip()


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


# What a store may say about a file's content, most specific first: a hub LFS file's sha256, a git
# blob id (hf://), an S3/HTTP/Azure ETag, an HTTP Content-MD5 or Digest, a GCS md5Hash.
CONTENT_IDS = ("sha256", "blob_id", "ETag", "etag", "Content-MD5", "Digest", "md5Hash")


def _stream_sha256(handle: Any) -> str:
    digest = hashlib.sha256()
    while block := handle.read(1 << 22):
        digest.update(block)
    return digest.hexdigest()


def source_fingerprint(path: str) -> dict[str, Any]:
    """What identifies ``data.path``'s content in prepare_data's key (where the file lies does not).

    A local file: its sha256. An fsspec URL (``hf://``, ``s3://``, ``https://``...): the store's
    content identity (``CONTENT_IDS``) with the size when its listing has one, else the sha256 of
    the bytes, read here. A missing or unreadable source is a DataError naming data.path."""
    if "://" not in path:
        if not Path(path).is_file():
            raise DataError(f"{path}: data file not found (set data.path)")
        with open(path, "rb") as fh:
            return {"sha256": _stream_sha256(fh)}
    import fsspec

    try:
        fs, inner = fsspec.core.url_to_fs(path)
        info = fs.info(inner)
        lfs = info.get("lfs") or {}
        for name in CONTENT_IDS:
            value = lfs.get("sha256") if name == "sha256" else info.get(name)
            if value:
                return {name: str(value), "size": info.get("size")}
        with fs.open(inner, "rb") as fh:
            return {"sha256": _stream_sha256(fh)}
    except FileNotFoundError:
        raise DataError(f"{path}: data file not found (set data.path)") from None
    except (OSError, ValueError, ImportError) as err:
        raise DataError(f"{path}: cannot read data.path ({type(err).__name__}: {err})") from None


def load_rows(path: str, fmt: str = "auto", task: str = "tldr") -> LoadedRows:
    """Validated rows of ``task`` from a JSONL or Parquet file (local path or fsspec URL such as
    ``hf://datasets/<owner>/<name>/<file>``). Rows whose body (post, dialogue) or reference is empty
    are dropped and counted."""
    spec = task_spec(task)
    rows, dropped, seen = [], 0, {}
    for line, record in _read_records(path, fmt):
        row = _check_row(record, spec, path, line)
        if row["id"] in seen:
            raise DataError(f"{path}:{line}: field 'id' repeats '{row['id']}' first seen on line {seen[row['id']]}")
        seen[row["id"]] = line
        if not row[spec.body].strip() or not row["reference"]:
            dropped += 1
            continue
        rows.append(row)
    if dropped:
        log.warning("%s: dropped %d rows with an empty %s or %s", path, dropped, spec.body, spec.reference)
    return LoadedRows(rows, dropped)


def split_rank(row_id: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{row_id}".encode()).hexdigest()


def split_shares(sizes: dict[str, int]) -> dict[str, tuple[float, float]]:
    """Each split's interval of [0, 1), in SPLITS order, as wide as its share of the requested rows."""
    total = sum(sizes.values())
    out, low = {}, 0.0
    for name in SPLITS:
        high = 1.0 if name == SPLITS[-1] else low + sizes[name] / total
        out[name] = (low, high)
        low = high
    return out


def split_rows(rows: Sequence[dict[str, Any]], sizes: dict[str, int], salt: str, task: str = "tldr") -> pd.DataFrame:
    """Assign rows to labeled / unlabeled / dev by the hash of their id, then keep ``sizes[split]`` of each.

    A row's split is fixed by where the hash of (salt, id) falls in [0, 1), cut into one interval per
    split in proportion to ``sizes``: it depends on nothing but the id, the salt and the sizes, so
    appending rows to the file never moves a row from one split to another (a dev row can never
    become a training row). Within a split the rows with the smallest hashes are kept, so a new row
    can push an old one out of its split's sample, never into another split.
    """
    wanted = sum(sizes.values())
    if wanted > len(rows):
        raise DataError(f"split sizes {sizes} need {wanted} rows but the data has {len(rows)}")
    ranked = sorted((split_rank(r["id"], salt), r) for r in rows)
    shares = split_shares(sizes)
    out = []
    for name in SPLITS:
        low, high = shares[name]
        members = [row for rank, row in ranked if low <= int(rank[:16], 16) / 16 ** 16 < high]
        if len(members) < sizes[name]:
            raise DataError(f"split '{name}' needs {sizes[name]} rows but only {len(members)} of the {len(rows)} "
                            f"rows hash into it (each split gets rows in proportion to the sizes); "
                            f"add rows or lower data.n_{name}")
        out += [{**row, "split": name} for row in members[:sizes[name]]]
    return pd.DataFrame(out, columns=rows_schema(task).names)


def fewshot_examples(labeled: pd.DataFrame, k: int, body: str) -> list[dict[str, Any]]:
    """The k labeled rows with the shortest ``body``: worked examples that cost the fewest prompt tokens."""
    if k <= 0:
        return []
    chosen = labeled.assign(_len=labeled[body].str.len()).sort_values(["_len", "id"]).head(k)
    return chosen.drop(columns="_len").to_dict("records")


def render_prompt(row: dict[str, Any], template: str, examples: Sequence[dict[str, Any]], separator: str) -> str:
    """Fill ``template`` for ``row``; each worked example is its filled template plus ' ' + reference."""
    shots = [template.format(**ex) + " " + ex["reference"] for ex in examples]
    return separator.join([*shots, template.format(**row)])


def build_prompts(rows: pd.DataFrame, tokenizer: Any, template: str, examples: Sequence[dict[str, Any]],
                  separator: str, max_prompt_tokens: int, spec: TaskSpec = TASKS["tldr"]) -> tuple[list[str], int]:
    """Rendered prompts, the body truncated by tokens so the prompt fits ``max_prompt_tokens``.

    Returns the prompts and the number of rows whose post had to be truncated.
    """
    prompts, truncated = [], 0
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    for row in rows.to_dict("records"):
        prompt = render_prompt(row, template, examples, separator)
        excess = count(prompt) - max_prompt_tokens
        if excess > 0:
            truncated += 1
            body_ids = tokenizer(row[spec.body], add_special_tokens=False)["input_ids"]
        while excess > 0:  # re-tokenising the decoded cut can shift a token, hence the loop
            if len(body_ids) <= excess:
                raise DataError(f"row {row['id']}: field '{spec.body}' cannot be truncated enough: the template "
                                f"and examples alone exceed prompt.max_tokens={max_prompt_tokens}")
            body_ids = body_ids[:len(body_ids) - excess] if spec.keep == "start" else body_ids[excess:]
            prompt = render_prompt({**row, spec.body: tokenizer.decode(body_ids)}, template, examples, separator)
            excess = count(prompt) - max_prompt_tokens
        prompts.append(prompt)
    return prompts, truncated
