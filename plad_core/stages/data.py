"""The prepare_data stage: the task's rows, validated and split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from plad_core import data as data_lib
from plad_core.artifacts import Artifact, ArtifactStore
from plad_core.config import config_slice
from plad_core.stages.keys import DATA_SLICE, materialize


def run_prepare_data(cfg: DictConfig, store: ArtifactStore, force: bool = False) -> Artifact:
    """Load, validate and split the task's rows into labeled / unlabeled / dev (``rows.parquet``),
    keyed by the content of ``data.path`` (``data.source_fingerprint``), not by where it lies."""
    path = cfg.data.path
    config = {**config_slice(cfg, DATA_SLICE), "source": data_lib.source_fingerprint(path)}

    def build(out: Path, work: Path) -> dict[str, Any]:
        loaded = data_lib.load_rows(path, cfg.data.format, cfg.data.task)
        sizes = {"labeled": cfg.data.n_labeled, "unlabeled": cfg.data.n_unlabeled, "dev": cfg.data.n_dev}
        frame = data_lib.split_rows(loaded.rows, sizes, cfg.data.split_salt, cfg.data.task)
        pq.write_table(pa.Table.from_pandas(frame, schema=data_lib.rows_schema(cfg.data.task), preserve_index=False),
                       out / "rows.parquet")
        return {"rows": frame["split"].value_counts().to_dict(), "source": path, "source_rows": len(loaded.rows),
                "dropped_empty": loaded.dropped_empty}

    return materialize(store, "prepare_data", config, [], build, force)
