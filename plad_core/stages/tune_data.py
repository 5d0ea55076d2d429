"""The tuning slice of ``plad table --tune``: labeled rows of the data file that no split of the
pipeline holds, so a tuned value is never chosen on a row the student trained on or on the dev rows
its table reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from plad_core import data as data_lib
from plad_core.artifacts import Artifact, ArtifactStore
from plad_core.stages import code_version


def unused_rows(rows: list[dict[str, Any]], used: set[str], n: int, salt: str, source: str) -> list[dict[str, Any]]:
    """The ``n`` rows of ``rows`` whose id is not in ``used``, smallest ``data.split_rank`` first (the order
    prepare_data keeps rows in), so the slice depends only on the file, the salt and the splits."""
    free = sorted((data_lib.split_rank(r["id"], salt), i) for i, r in enumerate(rows) if r["id"] not in used)
    if len(free) < n:
        raise data_lib.DataError(
            f"{source}: the tuning slice needs {n} rows outside the labeled, unlabeled and dev splits, but only "
            f"{len(free)} of the file's {len(rows)} rows are in none; lower the experiment's tuning.rows or the "
            "data.n_* sizes")
    return [rows[i] for _, i in free[:n]]


def run_tune_data(cfg: DictConfig, store: ArtifactStore, data: Artifact, rows: int, force: bool = False) -> Artifact:
    """``rows`` rows of ``data.path`` in none of ``data``'s splits (``unused_rows``) as a prepare_data-shaped
    artifact: those rows in its dev split, so dev_outputs and the table read them as they read dev, and
    ``data``'s labeled rows beside them for few-shot prompts. Keyed by ``data`` (the file's content, the
    sizes and the salt) and ``rows``."""
    path, task = cfg.data.path, cfg.data.task

    def build(out: Path, work: Path) -> dict[str, Any]:
        loaded = data_lib.load_rows(path, cfg.data.format, task)
        split = pd.read_parquet(data.file("rows.parquet"))  # every split's rows: all are off the slice
        labeled, used = split[split["split"] == "labeled"], set(split["id"])
        tune = unused_rows(loaded.rows, used, rows, cfg.data.split_salt, path)
        records = [{**r, "split": "dev"} for r in tune] + labeled.to_dict("records")
        pq.write_table(pa.Table.from_pylist(records, schema=data_lib.rows_schema(task)), out / "rows.parquet")
        return {"rows": {"dev": len(tune), "labeled": len(labeled)}, "source": path, "source_rows": len(loaded.rows),
                "outside_splits": len(loaded.rows) - len(used)}

    return store.materialize("tune_data", code_version.module_fingerprint(__name__), {"data.task": task, "rows": rows},
                             {data.stage: data.key}, build, force)
