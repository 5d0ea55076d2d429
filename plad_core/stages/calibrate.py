"""The calibrate stage: the SFT student trained on the pairs with ``train.loss``, in this process or
as ranks under torchrun (``training.torchrun``), both through ``training.calibrate.calibrate_student``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from plad_core.artifacts import Artifact, ArtifactStore
from plad_core.models import MODEL_DIR
from plad_core.stages.checks import check_train_loss
from plad_core.stages.inputs import pairs_with_scores
from plad_core.stages.keys import materialize, training_slice
from plad_core.stages.teacher import pairs_teacher, with_teacher
from plad_core.training import torchrun
from plad_core.training.calibrate import calibrate_student

log = logging.getLogger("plad.stages")



def run_calibrate(cfg: DictConfig, store: ArtifactStore, pairs: Artifact, sft: Artifact, scores: Artifact,
                  force: bool = False) -> Artifact:
    """Training of the SFT student on the pairs with ``train.loss`` (``train.LOSS_NAMES``; conf/base.yaml
    gives each one's equation): the PLaD calibration losses, the preference baselines (reading the
    score_pairs columns they need) and the SeqKD / token-KD baselines (token_kd loads the teacher here)."""
    check_train_loss(cfg)
    token_kd = cfg.train.loss == "token_kd"
    teacher = pairs_teacher(cfg, store, pairs) if token_kd else None
    config = {**training_slice(cfg, ["train"]), **({"teacher": teacher.identity} if teacher else {})}
    run_cfg = with_teacher(cfg, teacher) if teacher else cfg  # token_kd's ranks load the teacher from it

    def build(out: Path, work: Path) -> dict[str, Any]:
        frame = pairs_with_scores(pairs, scores)
        if cfg.train.launch.nproc > 1:
            return torchrun.run(run_cfg, frame, sft.file(MODEL_DIR), out, work, log)
        return calibrate_student(run_cfg, frame, sft.file(MODEL_DIR), out, work)

    return materialize(store, "calibrate", config, [pairs, sft, scores], build, force)
