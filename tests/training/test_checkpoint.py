"""Exact resume: training stopped anywhere (an exception at any micro-batch, or SIGKILL from outside)
and restarted ends with the same weights and log as a run that never stopped."""

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pair_fixtures import tldr_pairs, trainer_overrides
from safetensors.torch import load_file
from tiny import REPO, make_tiny_model, real_tokenizer
from transformers import LlamaForCausalLM

from plad_core.config import load_config
from plad_core.training import checkpoint, steps
from plad_core.training.calibrate import train_on_pairs

tokenizer = functools.cache(real_tokenizer)


class Crash(Exception):
    pass


def crashing_after(calls: int):
    """``steps.calibration_step`` whose step function raises on its call number ``calls`` + 1."""
    real = steps.calibration_step

    def make(*args, **kwargs):
        step, seen = real(*args, **kwargs), [0]

        def crashing(batch):
            seen[0] += 1
            if seen[0] > calls:
                raise Crash(f"crash at call {seen[0]}")
            return step(batch)
        return crashing
    return make


def fit(model_dir: Path, frame, cfg, folder: Path):
    student = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    history, stats = train_on_pairs(student, tokenizer(), frame, cfg.train, None, folder)
    return student.state_dict(), history, stats


def max_difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_resuming_after_a_crash_at_any_micro_batch_gives_the_uninterrupted_run(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    model_dir = make_tiny_model(tmp_path / "student", layers=2, hidden=16)
    frame = tldr_pairs(15)  # 2 held out, 13 trained on: batches of 3, 3, 3, 3 and 1 pairs
    cfg = load_config("base", trainer_overrides(**{"optim.epochs": 2, "keep": "best"}))
    reference, reference_log, stats = fit(model_dir, frame, cfg, tmp_path / "reference")
    # 2 epochs x 3 steps (2 + 2 + 1 micro-batches), evaluated at steps 2, 4 and 6: 10 + 3 step calls
    assert [row["step"] for row in reference_log] == [1, 2, 3, 4, 5, 6]
    assert [row["epoch"] for row in reference_log] == [0, 0, 0, 1, 1, 1]
    assert [row["step"] for row in reference_log if "eval_loss" in row] == [2, 4, 6]
    assert stats["held_out_pairs"] == 2 and stats["kept_step"] == stats["best_step"]

    resumed_from = set()
    for calls in range(1, 13):
        folder = tmp_path / f"crash-{calls}"
        monkeypatch.setattr(steps, "calibration_step", crashing_after(calls))
        with pytest.raises(Crash):
            fit(model_dir, frame, cfg, folder)
        monkeypatch.undo()
        last = folder / checkpoint.LAST
        resumed_from.add(torch.load(last, weights_only=True)["position"]["step"] if last.is_file() else 0)
        weights, log, _ = fit(model_dir, frame, cfg, folder)
        assert log == reference_log, f"crash after {calls} calls"
        assert max_difference(weights, reference) <= 1e-6, f"crash after {calls} calls"
    assert resumed_from == {0, 1, 2, 3, 4, 5}  # every checkpoint but the last one was resumed from


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    model_dir = make_tiny_model(tmp_path / "student", layers=2, hidden=16)
    frame = tldr_pairs(15)
    fit(model_dir, frame, load_config("base", trainer_overrides()), tmp_path / "run")
    with pytest.raises(ValueError, match="checkpoint of another run"):
        fit(model_dir, frame, load_config("base", trainer_overrides(**{"optim.seed": 1})), tmp_path / "run")


# One calibration (stages.calibrate_student, as the stage runs it) in a fresh interpreter;
# argv: student model folder, output folder, work folder
CALIBRATE = """
import logging, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
logging.basicConfig(level=logging.INFO)
from pair_fixtures import tldr_pairs, trainer_overrides
from plad_core.config import load_config
from plad_core.stages import calibrate_student
cfg = load_config("base", trainer_overrides(**{{"optim.batch_size": 2, "optim.grad_accum": 1, "optim.epochs": 2,
                                                "optim.checkpoint_every": 5, "eval_every": 10}}))
out, work = Path(sys.argv[2]), Path(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
work.mkdir(parents=True, exist_ok=True)
print("STATS", calibrate_student(cfg, tldr_pairs(28), Path(sys.argv[1]), out, work), flush=True)
""".format(tests=str(REPO / "tests"))


def start(model_dir: Path, root: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(root.with_suffix(".log"), "a") as out:
        return subprocess.Popen([sys.executable, "-c", CALIBRATE, str(model_dir), str(root / "out"), str(root / "work")],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, root: Path) -> dict:
    assert proc.wait(timeout=600) == 0, root.with_suffix(".log").read_text()[-3000:]
    return load_file(root / "out" / "model" / "model.safetensors")


@pytest.mark.slow
def test_a_calibration_killed_from_outside_resumes_to_the_uninterrupted_weights(tmp_path):
    model_dir = make_tiny_model(tmp_path / "student", layers=2, hidden=16)
    uninterrupted = start(model_dir, tmp_path / "clean")  # runs alongside the killed one
    root = tmp_path / "killed"
    proc = start(model_dir, root)
    last = root / "work" / "checkpoints" / checkpoint.LAST
    deadline = time.time() + 300
    while not last.is_file():  # the first checkpoint is written after step 5 of 24
        assert proc.poll() is None, "training ended before its first checkpoint:\n" + root.with_suffix(".log").read_text()
        assert time.time() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (root / "out" / "model").exists(), "killed too late: training had finished"
    killed_at = torch.load(last, weights_only=True)["position"]["step"]
    assert 5 <= killed_at < 24

    resumed = finish(start(model_dir, root), root)
    clean = finish(uninterrupted, tmp_path / "clean")
    assert f"resumed at step {killed_at} of 24" in root.with_suffix(".log").read_text()
    assert max(float((clean[k] - resumed[k]).abs().max()) for k in clean) <= 1e-6
