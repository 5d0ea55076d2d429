"""How a stage reads its upstream artifacts: a split's rows, prompts, a model, dev outputs, scored pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from plad_core import data as data_lib
from plad_core import models
from plad_core.artifacts import Artifact
from plad_core.models import MODEL_DIR


def read_split(data: Artifact, split: str) -> pd.DataFrame:
    """The rows of one split (labeled, unlabeled or dev) of a prepare_data artifact."""
    rows = pd.read_parquet(data.file("rows.parquet"))
    return rows[rows["split"] == split].reset_index(drop=True)


def prompts_for(rows: pd.DataFrame, data: Artifact, prompt_cfg: DictConfig, tokenizer: Any) -> tuple[list[str], int]:
    """The prompts of ``rows`` (with the labeled split's few-shot examples) and how many were truncated."""
    spec = data_lib.task_spec(data.manifest["config"]["data.task"])
    examples = data_lib.fewshot_examples(read_split(data, "labeled"), prompt_cfg.fewshot_k, spec.body)
    return data_lib.build_prompts(rows, tokenizer, prompt_cfg.template, examples, prompt_cfg.fewshot_separator,
                                  prompt_cfg.max_tokens, spec)


def load_artifact_model(artifact: Artifact, cfg: DictConfig):
    return models.load_model(str(artifact.file(MODEL_DIR)), cfg.cache_dir, device=cfg.device)


def dev_frames(outputs: Artifact, system: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """A dev_outputs artifact's generations and calibration samples (None when it has none), each
    with ``system`` as its first column."""
    def named(path: Path) -> pd.DataFrame:
        frame = pd.read_parquet(path)
        return frame.assign(system=system)[["system", *frame.columns]]
    samples = outputs.file("calibration_samples.parquet")
    return named(outputs.file("generations.parquet")), named(samples) if samples.is_file() else None


def pairs_with_scores(pairs: Artifact, scores: Artifact) -> pd.DataFrame:
    """pairs.parquet joined with the score_pairs columns, one row per pair."""
    frame = pd.read_parquet(pairs.file("pairs.parquet"))
    if frame.empty:
        raise ValueError(f"{pairs.file('pairs.parquet')}: no pairs to train on")
    stored = pd.read_parquet(scores.file("scores.parquet"))
    joined = frame.merge(stored, on=["id", "sample_index"], how="left", validate="one_to_one")
    if len(stored) != len(frame) or joined["chosen_scored_tokens"].isna().any():
        raise ValueError(f"{scores.file('scores.parquet')} does not hold exactly one row per pair of "
                         f"{pairs.file('pairs.parquet')}")
    return joined
