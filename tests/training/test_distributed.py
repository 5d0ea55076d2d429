"""Calibration on 2 CPU ranks under torchrun (gloo on 127.0.0.1) against one process, with DDP and
sharded with FSDP2, and checkpoints written under FSDP resumed under FSDP and in one process."""

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pair_fixtures import tldr_pairs, trainer_overrides
from safetensors.torch import load_file
from tiny import make_tiny_model
from transformers import LlamaForCausalLM

from plad_core.config import ConfigError, load_config
from plad_core.stages import calibrate_student
from plad_core.training import checkpoint, distributed, torchrun


def test_shard_pairs_splits_both_halves_and_pads_an_empty_share_with_a_weightless_pair():
    batch = {"input_ids": torch.arange(6).unsqueeze(1), "chosen_score": torch.tensor([0.1, 0.2, 0.3])}  # 3 pairs
    part0, n0, size = distributed.shard_pairs(batch, 0, 2)
    part1, n1, _ = distributed.shard_pairs(batch, 1, 2)
    assert (size, n0, n1) == (3, 2, 1)
    assert part0["input_ids"].flatten().tolist() == [0, 1, 3, 4]  # chosen rows 0-1, rejected rows 0-1
    assert part1["input_ids"].flatten().tolist() == [2, 5]
    assert part1["chosen_score"].tolist() == pytest.approx([0.3])
    part3, n3, _ = distributed.shard_pairs(batch, 3, 4)  # 3 pairs on 4 ranks: rank 3 gets a stand-in
    assert n3 == 0 and part3["input_ids"].flatten().tolist() == [0, 3]
    with pytest.raises(ValueError, match="'odd' has 4 rows"):
        distributed.shard_pairs({**batch, "odd": torch.zeros(4)}, 0, 2)


@pytest.mark.slow
def test_two_cpu_ranks_match_one_process_on_the_same_global_batches(tmp_path, caplog):
    model_dir = make_tiny_model(tmp_path / "student", layers=2, hidden=16)
    frame = tldr_pairs(15)  # 13 trained on in batches of 3, 3, 3, 3, 1 pairs: ranks get 2+1, and 1+none
    overrides = trainer_overrides(**{"eval_every": 1, "keep": "best"})
    runs = {}
    for nproc in (1, 2):
        out, work = tmp_path / f"out{nproc}", tmp_path / f"work{nproc}"
        out.mkdir()
        work.mkdir()
        cfg = load_config("base", overrides + [f"train.launch.nproc={nproc}"])
        if nproc == 1:
            stats = calibrate_student(cfg, frame, model_dir, out, work)
        else:
            caplog.set_level(logging.INFO, logger="test.ddp")
            stats = torchrun.run(cfg, frame, model_dir, out, work, logging.getLogger("test.ddp"))
        runs[nproc] = (pd.read_parquet(out / "train_log.parquet"), load_file(out / "model" / "model.safetensors"), stats)
    (log1, weights1, stats1), (log2, weights2, stats2) = runs[1], runs[2]
    assert list(log2.columns) == list(log1.columns) and len(log1) == 3
    assert log2[["step", "epoch", "tokens", "padding_share"]].equals(log1[["step", "epoch", "tokens", "padding_share"]])
    for column in ["loss", "pair_accuracy", "margin", "grad_norm", "eval_loss", "eval_pair_accuracy", "eval_margin"]:
        np.testing.assert_allclose(log2[column], log1[column], rtol=0, atol=1e-5, err_msg=column)
    assert max(float((weights1[k] - weights2[k]).abs().max()) for k in weights1) <= 1e-5
    assert stats2["kept_step"] == stats1["kept_step"] and stats2["held_out_pairs"] == stats1["held_out_pairs"] == 2
    streamed = [r.getMessage() for r in caplog.records if r.name == "test.ddp"]
    assert any(re.search(r"rank 0 .*plad.train: calibrate \(ranking\): step 3/3", m) for m in streamed), streamed[-20:]


# 13 pairs trained on in batches of 3, 3, 3, 3, 1 (2 micro-batches a step: 3 steps, the second
# micro-batch's reduce-scatter only), 2 held out and evaluated after every step, the best step kept.
PAIRS = 15
OVERRIDES = trainer_overrides(eval_every=1, keep="best")
LOG_COLUMNS = ["loss", "pair_accuracy", "margin", "grad_norm", "eval_loss", "eval_pair_accuracy", "eval_margin"]
# fp32 weights after 3 AdamW steps of lr 1e-3: one process and two ranks add the same gradients in
# another order (float rounding ~1e-7 relative), and Adam's division by sqrt(v) can amplify that to a
# small share of one step's update (at most lr = 1e-3 per weight); 1e-5 is 1% of such an update, and a
# real fault (a gradient left unreduced, a micro-batch lost) moves weights by ~lr. Measured: 1.3e-7.
WEIGHTS_ATOL = 1e-5


def fsdp_config(nproc: int = 2):
    return load_config("base", OVERRIDES + [f"train.launch.nproc={nproc}", "train.launch.strategy=fsdp"])


def folders(root: Path) -> tuple[Path, Path]:
    out, work = root / "out", root / "work"
    out.mkdir(parents=True)
    work.mkdir(parents=True, exist_ok=True)
    return out, work


def result(out: Path) -> tuple[pd.DataFrame, dict]:
    return pd.read_parquet(out / "train_log.parquet"), load_file(out / "model" / "model.safetensors")


def assert_same_training(run: tuple[pd.DataFrame, dict], reference: tuple[pd.DataFrame, dict]) -> None:
    (log, weights), (ref_log, ref_weights) = run, reference
    assert list(log.columns) == list(ref_log.columns) and len(ref_log) == 3
    assert log[["step", "epoch", "tokens", "padding_share"]].equals(ref_log[["step", "epoch", "tokens", "padding_share"]])
    for column in LOG_COLUMNS:
        np.testing.assert_allclose(log[column], ref_log[column], rtol=0, atol=1e-5, err_msg=column)
    assert sorted(weights) == sorted(ref_weights)  # the same model file: the tied LM head is not written twice
    assert max(float((weights[k] - ref_weights[k]).abs().max()) for k in ref_weights) <= WEIGHTS_ATOL


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> tuple[Path, tuple[pd.DataFrame, dict], dict]:
    """The tiny student, and its calibration in this process: log, weights, stats."""
    root = tmp_path_factory.mktemp("fsdp")
    model_dir = make_tiny_model(root / "student", layers=2, hidden=16)
    out, work = folders(root / "one")
    stats = calibrate_student(load_config("base", OVERRIDES), tldr_pairs(PAIRS), model_dir, out, work)
    return model_dir, result(out), stats


@pytest.mark.slow
def test_two_fsdp_cpu_ranks_match_one_process_on_the_same_global_batches(tmp_path, one_process, caplog):
    model_dir, reference, stats = one_process
    out, work = folders(tmp_path)
    caplog.set_level(logging.INFO, logger="test.fsdp")
    fsdp_stats = torchrun.run(fsdp_config(), tldr_pairs(PAIRS), model_dir, out, work,
                             logging.getLogger("test.fsdp"))
    assert_same_training(result(out), reference)
    assert fsdp_stats["kept_step"] == stats["kept_step"] and fsdp_stats["held_out_pairs"] == 2
    assert (out / "model" / "config.json").read_text() == (model_dir.parent / "one" / "out" / "model" /
                                                           "config.json").read_text()


# A rank of torchrun.main whose calibration step raises on its call number CALLS + 1 (on every rank).
CRASHING_WORKER = """
import sys
from plad_core.training import steps, torchrun

CALLS = {calls}
real = steps.calibration_step


def crashing(*args, **kwargs):
    step, seen = real(*args, **kwargs), [0]

    def run(batch):
        seen[0] += 1
        if seen[0] > CALLS:
            raise RuntimeError(f"crash at call {{seen[0]}}")
        return step(batch)
    return run


steps.calibration_step = crashing
torchrun.main(sys.argv[1:])
"""


class Lines(logging.Handler):
    """The messages of a logger (caplog is per test; the fixture below is per module)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def crashed_under_fsdp(tmp_path_factory, one_process) -> Path:
    """The work folder of a 2-rank FSDP calibration that crashed in step 2, after step 1's checkpoint."""
    model_dir = one_process[0]
    root = tmp_path_factory.mktemp("crashed")
    # step 1 makes calls 1-2 (micro-batches) and 3 (evaluation), then its checkpoint; call 5 is step 2's last
    script = root / "crashing_worker.py"
    script.write_text(CRASHING_WORKER.format(calls=4))
    out, work = folders(root)
    logger = logging.getLogger("test.fsdp.crash")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler := Lines())
    with pytest.MonkeyPatch.context() as patch:
        torchrun_command = torchrun.torchrun_command
        patch.setattr(torchrun, "torchrun_command", lambda nproc, program, **kwargs: torchrun_command(
            nproc, [str(script), *program[2:]], **kwargs))  # the crashing worker instead of -m ...training.torchrun
        with pytest.raises(RuntimeError, match="exited with 1"):
            torchrun.run(fsdp_config(), tldr_pairs(PAIRS), model_dir, out, work, logger)
    logger.removeHandler(handler)
    assert sum("RuntimeError: crash at call 5" in m for m in handler.lines) == 2, handler.lines[-30:]  # both ranks
    assert not (out / "model").exists()
    return work


def resumed(crashed: Path, root: Path) -> tuple[Path, Path]:
    """Output and work folders for a run that resumes from a copy of ``crashed``'s checkpoint."""
    shutil.copytree(crashed, root / "work")
    return folders(root)


@pytest.mark.slow
def test_a_checkpoint_written_under_fsdp_resumes_under_fsdp(tmp_path, one_process, crashed_under_fsdp, caplog):
    model_dir, reference, _ = one_process
    out, work = resumed(crashed_under_fsdp, tmp_path)
    caplog.set_level(logging.INFO, logger="test.fsdp")
    torchrun.run(fsdp_config(), tldr_pairs(PAIRS), model_dir, out, work, logging.getLogger("test.fsdp"))
    assert any("resumed at step 1 of 3" in r.getMessage() for r in caplog.records if r.name == "test.fsdp")
    assert_same_training(result(out), reference)


@pytest.mark.slow
def test_a_checkpoint_written_under_fsdp_resumes_in_one_process(tmp_path, one_process, crashed_under_fsdp, caplog):
    model_dir, reference, _ = one_process
    out, work = resumed(crashed_under_fsdp, tmp_path)
    caplog.set_level(logging.INFO, logger="plad.train")
    calibrate_student(load_config("base", OVERRIDES), tldr_pairs(PAIRS), model_dir, out, work)
    assert any("resumed at step 1 of 3" in r.getMessage() for r in caplog.records)
    assert_same_training(result(out), reference)


def test_an_unknown_strategy_is_refused_by_name():
    with pytest.raises(ValueError, match="train.launch.strategy='zero3' is not known; choose one of ddp, fsdp"):
        distributed.check_strategy("zero3")
    with pytest.raises(ConfigError, match="train.launch.strategy='zero3' is not one of: ddp, fsdp"):
        load_config("base", OVERRIDES + ["train.launch.strategy=zero3"])
    assert distributed.STRATEGIES == ("ddp", "fsdp")


def test_fsdp_shards_each_decoder_layer_of_a_transformers_model_and_names_a_model_without_them(tmp_path):
    student = LlamaForCausalLM.from_pretrained(make_tiny_model(tmp_path / "student", layers=2, hidden=16))
    assert [type(m).__name__ for m in distributed._decoder_layers(student)] == ["LlamaDecoderLayer"] * 2
    with pytest.raises(ValueError, match="Sequential holds none .*use train.launch.strategy=ddp"):
        distributed._decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_a_checkpoint_in_the_layout_before_fsdp_is_refused_with_its_path(tmp_path):
    torch.save({"model": {}, "optimizer": {"state": {0: {}}, "param_groups": []}, "fingerprint": {}},
               tmp_path / checkpoint.LAST)  # format 1: the optimizer state keyed by position, no "format"
    with pytest.raises(ValueError, match=r"last.pt: checkpoint in format 1 of an older plad, this one reads format 2"):
        checkpoint.load_last(tmp_path, {})
