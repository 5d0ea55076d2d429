"""Champion/challenger: whether the new PLaD student replaces the registry's champion."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Optional

import pandas as pd
from omegaconf import DictConfig

from plad_core import models
from plad_core.artifacts import Artifact, ArtifactStore
from plad_core.config import ConfigError, config_slice
from plad_core.models import MODEL_DIR
from plad_core.registry import Lineage, Registry, promotion_decision, registry_path
from plad_core.sampling import openai_api
from plad_core.stages.evaluate import dev_generations
from plad_core.stages.inputs import read_split
from plad_core.stages.keys import DATA_SLICE, api_identity, teacher_identity

log = logging.getLogger("plad.stages")

METRICS = ("rouge1", "rouge2", "rougeL")  # the per-row scores in an evaluation's generations.parquet
ATTEMPTS = 2  # a champion that changes under a run is re-scored once; after that the run is not promoted


def check_promotion(cfg: DictConfig) -> None:
    """Fail fast, before any stage, on promotion settings that could only fail or promote nothing
    after the whole run: the challenger is ``plad`` on the dev split, scored by ``promotion.metric``."""
    p = cfg.promotion
    if not p.enabled:
        return
    if "plad" not in cfg.eval.systems:
        raise ConfigError(f"promotion.enabled=true compares the PLaD student, but eval.systems="
                          f"{list(cfg.eval.systems)} does not evaluate it: add plad or set promotion.enabled=false")
    if cfg.data.n_dev < 1:
        raise ConfigError(f"promotion.enabled=true compares students on the dev split, but data.n_dev="
                          f"{cfg.data.n_dev}: set data.n_dev > 0 or promotion.enabled=false")
    if p.metric not in METRICS:
        raise ConfigError(f"promotion.metric='{p.metric}' is not one of: {', '.join(METRICS)}")


def promotion_lineage(cfg: DictConfig, data: Artifact) -> Lineage:
    """Runs compete only with the same config name, data settings and teacher (its weights' identity,
    or an API's endpoint and served name).

    The data identity is the data settings (task, path, split sizes and salt), not the file's content:
    a nightly run on a file with new rows must meet the champion, and since a row's split never
    changes when rows are appended (``data.split_rows``), the champion is re-scored on dev rows it
    never trained on.
    """
    sp = cfg.teacher.sampling
    teacher = (api_identity(openai_api.ApiSettings.from_config(sp.api).check("teacher.sampling.api"))
               if sp.backend == "openai" else teacher_identity(cfg))
    return Lineage(cfg.name, _digest(config_slice(cfg, [*DATA_SLICE, "data.path"])), _digest(teacher))


def _digest(identity: Any) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _rescore_champion(cfg: DictConfig, data: Artifact, champion: dict[str, Any], ids: list[str]) -> list[float]:
    """The champion's per-row ``promotion.metric`` on the current dev rows, in the order of ``ids``."""
    path = champion["model_path"]
    if not Path(path).is_dir():
        raise FileNotFoundError(f"the champion (registry entry {champion['id']}, calibrate key "
                                f"{champion['calibrate_key']}) has no model at {path}: restore it there, or "
                                f"move the registry aside to start the lineage afresh")
    model, tokenizer = models.load_model(path, cfg.cache_dir, device=cfg.device)
    dev = read_split(data, "dev")
    scored = dev_generations(model, tokenizer, "champion", dev, data, cfg.student.prompt, cfg)
    return list(scored.set_index("id")[cfg.promotion.metric].reindex(ids))


def _decide(cfg: DictConfig, data: Artifact, calibrated: Artifact, champion: Optional[dict[str, Any]],
            challenger: pd.Series) -> dict[str, Any]:
    p = cfg.promotion
    if champion is not None and champion["calibrate_key"] == calibrated.key:
        return {"promoted": False, "reason": "same model as the champion", "champion_score": float(challenger.mean())}
    incumbent = None if champion is None else _rescore_champion(cfg, data, champion, list(challenger.index))
    return promotion_decision(list(challenger), incumbent, p.n_resamples, p.seed)


def run_promote(cfg: DictConfig, store: ArtifactStore, data: Artifact, calibrated: Artifact, evaluation: Artifact,
                run_id: str | None = None) -> dict[str, Any]:
    """Champion/challenger: the new PLaD student replaces its lineage's champion only if it beats it on
    the dev split's ``promotion.metric`` by more than the bootstrap CI of the paired difference.

    Not an artifact: it reads and appends to the registry (``plad history``). The champion is
    re-scored on the current dev rows with the current eval settings, so both are scored alike. The
    re-scoring runs outside the registry's lock; the decision is recorded in one transaction only if
    the champion it was scored against is still the champion, else it is re-scored once, and a run
    whose champion changed twice is recorded as not promoted.
    """
    check_promotion(cfg)
    p = cfg.promotion
    registry = Registry(registry_path(cfg, store.root))
    lineage = promotion_lineage(cfg, data)
    generations = pd.read_parquet(evaluation.file("generations.parquet"))
    challenger = generations[generations["system"] == "plad"].set_index("id")[p.metric].sort_index()
    entry = {"run_id": run_id, "metric": p.metric, "model_path": str(calibrated.file(MODEL_DIR)),
             "calibrate_key": calibrated.key, "evaluate_key": evaluation.key,
             "challenger_score": float(challenger.mean()) if len(challenger) else None}
    recorded = None
    for attempt in range(ATTEMPTS):
        champion = registry.champion(lineage)
        decision = _decide(cfg, data, calibrated, champion, challenger)
        model_path = (str(registry.keep_model(calibrated.file(MODEL_DIR), calibrated.key)) if decision["promoted"]
                      else entry["model_path"])
        changed = ({"reason": "not promoted: the champion changed twice during the run"}
                   if attempt == ATTEMPTS - 1 else None)
        recorded = registry.decide_and_record({**entry, **decision, "model_path": model_path}, lineage,
                                              champion["id"] if champion else None, changed)
        if recorded is not None:
            break
        log.info("promotion: the champion changed during the run; re-scoring against the new one")
    log.info("promotion: %s (%s)", "promoted" if recorded["promoted"] else "kept the champion", recorded["reason"])
    return recorded
