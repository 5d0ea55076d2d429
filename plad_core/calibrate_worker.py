"""Calibration under ``torchrun``: the launching side (``run``) and what each rank runs (``main``).

``run`` writes the resolved config and the pairs into the stage's work folder and starts
``torchrun --nproc-per-node N -m plad_core.calibrate_worker`` under ``launch.supervise``. Each rank
joins the process group, loads the config, the pairs and the SFT student from those paths and
calls the same ``stages.calibrate_student`` as a one-process run; rank 0 writes the model and the
log into the stage's output folder and the stats into the work folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from plad_core import launch, parallel
from plad_core.config import load_config

STATS = "stats.json"


def run(cfg: DictConfig, frame: pd.DataFrame, student_dir: Path, out: Path, work: Path,
        logger: logging.Logger) -> dict[str, Any]:
    """Calibrate on ``cfg.train.launch.nproc`` ranks; returns rank 0's stats."""
    config_path, pairs_path = work / "config.yaml", work / "pairs.parquet"
    config_path.write_text(OmegaConf.to_yaml(cfg))
    frame.to_parquet(pairs_path, index=False)
    args = ["--config", str(config_path), "--pairs", str(pairs_path), "--student", str(student_dir),
            "--out", str(out), "--work", str(work)]
    n = cfg.train.launch.nproc
    command = launch.torchrun_command(n, ["-m", __name__, *args], private_network=cfg.train.launch.private_network)
    launch.supervise(command, logger, timeout_s=cfg.train.launch.timeout_s,
                     env=launch.local_env(), prefix=f"torchrun x{n}: ")
    return json.loads((work / STATS).read_text())


def main(argv: Optional[list[str]] = None) -> None:
    launch.watch_supervisor()
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("config", "pairs", "student", "out", "work"):
        parser.add_argument(f"--{name}", required=True)
    args = parser.parse_args(argv)
    from plad_core import models, stages  # here: stages imports this module for run()
    cfg = load_config(args.config)
    device = parallel.init_from_env(models.resolve_device(cfg.device).type == "cuda")
    r = parallel.ranks()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format=f"rank {r.rank} %(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, [f"device={device}"])
    # torchrun sets OMP_NUM_THREADS=1; with threads: 0 the ranks share the machine's cores instead
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // r.world))
    stats = stages.calibrate_student(cfg, pd.read_parquet(args.pairs), Path(args.student), Path(args.out),
                                     Path(args.work))
    if r.rank == 0:
        (Path(args.work) / STATS).write_text(json.dumps(stats))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
