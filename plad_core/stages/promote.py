"""Champion/challenger: whether the new PLaD student replaces the registry's champion."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from plad_core import models
from plad_core.artifacts import Artifact, ArtifactStore
from plad_core.models import MODEL_DIR
from plad_core.registry import Registry, promotion_decision, registry_path
from plad_core.stages.evaluate import dev_generations
from plad_core.stages.inputs import read_split

log = logging.getLogger("plad.stages")


def run_promote(cfg: DictConfig, store: ArtifactStore, data: Artifact, calibrated: Artifact, evaluation: Artifact,
                run_id: str | None = None) -> dict[str, Any]:
    """Champion/challenger: the new PLaD student replaces the champion only if it beats it on the dev
    split's ``promotion.metric`` by more than the bootstrap CI of the paired difference.

    Not an artifact: it reads and appends to the registry (``plad history``). The champion is
    re-scored on the current dev rows, so nights with new dev data compare like with like.
    """
    p = cfg.promotion
    registry = Registry(registry_path(cfg, store.root))
    generations = pd.read_parquet(evaluation.file("generations.parquet"))
    challenger = generations[generations["system"] == "plad"].sort_values("id")
    champion = registry.champion(cfg.name)
    entry = {"run_id": run_id, "config": cfg.name, "metric": p.metric, "model_path": str(calibrated.file(MODEL_DIR)),
             "calibrate_key": calibrated.key, "evaluate_key": evaluation.key,
             "challenger_score": float(challenger[p.metric].mean())}
    if champion is None:
        decision = {"promoted": True, "reason": "no champion yet"}
    elif champion["calibrate_key"] == calibrated.key:
        decision = {"promoted": False, "reason": "same model as the champion",
                    "champion_score": entry["challenger_score"]}
    else:
        model, tokenizer = models.load_model(champion["model_path"], cfg.cache_dir, device=cfg.device)
        dev = read_split(data, "dev")
        incumbent = dev_generations(model, tokenizer, "champion", dev, data, cfg.student.prompt, cfg).sort_values("id")
        decision = promotion_decision(list(challenger[p.metric]), list(incumbent[p.metric]), p.n_resamples, p.seed)
    entry.update(decision)
    registry.record(entry)
    log.info("promotion: %s (%s)", "promoted" if entry["promoted"] else "kept the champion", entry["reason"])
    return entry
