"""Promotion compares ROUGE only: the same evaluation with judgments that say the challenger wins every
pair, loses every pair, or with no judge output at all, gives the same decision."""

import json

import numpy as np
import pandas as pd
import pytest

from plad_core.artifacts import Artifact, ArtifactStore
from plad_core.config import load_config
from plad_core.evaluation.judge import JUDGMENT_COLUMNS
from plad_core.evaluation.metrics import evaluation_metrics
from plad_core.models import MODEL_DIR
from plad_core.registry import Lineage, Registry
from plad_core.stages import promote

IDS = [f"row{i:02d}" for i in range(16)]
LINEAGE = Lineage("tldr", "data", "teacher")


def evaluation(folder, challenger, judge_says):
    """An evaluate artifact: the challenger's per-row ROUGE-L, and judgments (with metrics.json's win rates)
    in which the judge prefers the challenger ("wins"), the reference ("loses"), or no judge files (None)."""
    folder.mkdir(parents=True)
    generations = pd.DataFrame({"system": "plad", "id": IDS, "text": "x", "output_tokens": 5, "rouge1": challenger,
                                "rouge2": challenger, "rougeL": challenger})
    generations.to_parquet(folder / "generations.parquet", index=False)
    if judge_says is not None:
        sign = 1.0 if judge_says == "wins" else -1.0
        judgments = pd.DataFrame([{"id": i, "system": "plad", "opponent": "reference", "system_position": pos,
                                   "verdict": pos if sign > 0 else "AB".replace(pos, ""),
                                   "logp_a": sign if pos == "A" else -sign, "logp_b": 0.0, "raw": ""}
                                  for i in IDS for pos in "AB"], columns=JUDGMENT_COLUMNS)
        judgments.to_parquet(folder / "judgments.parquet", index=False)
        metrics = evaluation_metrics(generations, pd.DataFrame({"id": IDS, "reference": "r"}),
                                     pd.DataFrame(columns=["system", "id", "sample_index", "logp_mean", "rougeL"]),
                                     judgments=judgments, n_resamples=100)
        assert metrics["judge"]["vs"]["reference"]["plad"]["win_rate"] == (100.0 if sign > 0 else 0.0)
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return Artifact("evaluate", "e" * 16, folder, {})


def decide(tmp_path, name, challenger, champion, judge_says, monkeypatch):
    cfg = load_config("tldr", [f"promotion.registry={tmp_path / name / 'registry.sqlite'}"])
    registry = Registry(tmp_path / name / "registry.sqlite")
    registry.decide_and_record({"promoted": True, "calibrate_key": "champion", "model_path": str(tmp_path)}, LINEAGE, None)
    model = tmp_path / name / "calibrate" / MODEL_DIR
    model.mkdir(parents=True)
    (model / "weights").write_text("w")
    monkeypatch.setattr(promote, "promotion_lineage", lambda cfg, data: LINEAGE)
    monkeypatch.setattr(promote, "_rescore_champion", lambda cfg, data, entry, ids: list(champion))
    decision = promote.run_promote(cfg, ArtifactStore(tmp_path / name / "artifacts"), None, Artifact("calibrate", "c" * 16, model.parent, {}),
                                   evaluation(tmp_path / name / "evaluate", challenger, judge_says))
    return {k: decision[k] for k in ("promoted", "reason", "difference", "ci_low", "ci_high", "challenger_score")}


@pytest.mark.parametrize("gain", [0.05, -0.05])
def test_the_promotion_decision_is_the_same_whatever_the_judge_says(tmp_path, monkeypatch, gain):
    champion = np.random.default_rng(0).uniform(0.1, 0.5, len(IDS))
    challenger = champion + gain
    decisions = [decide(tmp_path, f"{says}", challenger, champion, says, monkeypatch) for says in ("wins", "loses", None)]
    assert decisions[0] == decisions[1] == decisions[2]
    assert decisions[0]["promoted"] == (gain > 0)  # ROUGE-L decides: promoted by its gain, kept by its loss
    assert decisions[0]["difference"] == pytest.approx(gain)
