"""The curate_pairs stage: build_pairs' pairs less those that would teach the student the wrong thing
(``plad_core.pairs.curate_pairs``), with every dropped pair and its reason kept beside them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from plad_core import models
from plad_core.artifacts import Artifact, ArtifactStore
from plad_core.config import config_slice
from plad_core.losses import stored_columns
from plad_core.models import MODEL_DIR
from plad_core.pairs import DROPPED_SCHEMA, PAIRS_SCHEMA, curate_pairs
from plad_core.stages.inputs import load_artifact_model
from plad_core.stages.keys import materialize, precision
from plad_core.training import reference_scores
from plad_core.training.batches import encode_pairs


def curate_config(cfg: DictConfig) -> dict[str, Any]:
    """curate_pairs' key: ``pairs.curate``, and when the SFT student scores the pairs (``student_margin``
    set) what changes its scores: the encoding's ``max_seq_len`` and the precision training runs in."""
    config = config_slice(cfg, ["pairs.curate"])
    if cfg.pairs.curate.student_margin is not None:
        config["train.optim.max_seq_len"] = cfg.train.optim.max_seq_len
        config["train.optim.bf16"] = precision(cfg, "train.optim.bf16")
    return config


def student_gap(cfg: DictConfig, frame: pd.DataFrame, sft: Artifact) -> pd.Series:
    """log P̄(y_T) − log P̄(y_S) of each pair under the SFT student, scored as score_pairs scores its
    reference columns (the token ids training uses, ``batches.encode_pairs``)."""
    o = cfg.train.optim
    tokenizer = models.load_tokenizer(str(sft.file(MODEL_DIR)))
    encoded = encode_pairs(frame, tokenizer, o.max_seq_len)
    scores = reference_scores.score_pairs(frame, encoded, tokenizer.pad_token_id,
                                          {"reference": load_artifact_model(sft, cfg)[0]}, 2 * o.batch_size,
                                          precision(cfg, "train.optim.bf16"))
    chosen, rejected = stored_columns("reference")
    return (scores[chosen] / scores["chosen_scored_tokens"].clip(lower=1)
            - scores[rejected] / scores["rejected_scored_tokens"].clip(lower=1))


def run_curate_pairs(cfg: DictConfig, store: ArtifactStore, built: Artifact, sft: Artifact,
                     force: bool = False) -> Artifact:
    """The pairs every loss trains on: build_pairs' ``pairs.parquet`` less the degenerate ones (y_T's
    repeated 3-gram share above ``pairs.curate.max_repeat_share``) and, when ``pairs.curate.student_margin``
    is set, those the SFT student already ranks right by more than it (the only case that loads a model).

    Writes ``pairs.parquet`` (``PAIRS_SCHEMA``, as build_pairs') and ``dropped.parquet`` (``DROPPED_SCHEMA``:
    the dropped pairs with their ``reason``); the manifest counts pairs built, dropped per reason and kept,
    the pairs build_pairs already dropped as truncated, and the mean repeat share before and after.
    """
    c = cfg.pairs.curate
    config = curate_config(cfg)

    def build(out: Path, work: Path) -> dict[str, Any]:
        frame = pd.read_parquet(built.file("pairs.parquet"))
        gap = student_gap(cfg, frame, sft) if c.student_margin is not None and len(frame) else None
        kept, dropped, stats = curate_pairs(frame, c.max_repeat_share, gap, c.student_margin)
        pq.write_table(pa.Table.from_pandas(kept, schema=PAIRS_SCHEMA, preserve_index=False), out / "pairs.parquet")
        pq.write_table(pa.Table.from_pandas(dropped, schema=DROPPED_SCHEMA, preserve_index=False),
                       out / "dropped.parquet")
        b = built.manifest["stats"]
        stats["truncated"] = {"policy": b["truncated"]["policy"], "dropped_by_build_pairs": b["dropped_truncated"]}
        return {**stats, "rows": len(kept), "settings": {"max_repeat_share": c.max_repeat_share,
                                                         "student_margin": c.student_margin}}

    return materialize(store, "curate_pairs", config, [built, sft], build, force)


def curation_stats(store: ArtifactStore, calibrated: Artifact) -> dict[str, Any] | None:
    """The stats of the curate_pairs artifact a calibrate artifact was trained on (its manifest's upstream),
    for the evaluation report's pair-curation section; None where there is none in the store."""
    key = calibrated.manifest.get("upstream", {}).get("curate_pairs")
    curated = store.get("curate_pairs", key) if key else None
    return curated.manifest["stats"] if curated is not None else None
