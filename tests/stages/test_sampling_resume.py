"""Kill-and-resume: SIGKILL the sample_teacher stage after its first shard is committed, restart it,
and get exactly the samples of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tiny import REPO, make_tiny_model

# run_stage in a fresh interpreter, as a scheduler would; argv: root, teacher model folder
STAGE = """
import logging, sys
from pathlib import Path
import torch
torch.set_num_threads(1)  # the machine is shared: one thread is faster than two fighting others
sys.path.insert(0, {tests!r})
logging.basicConfig(level=logging.INFO)
from plad_core.artifacts import ArtifactStore
from plad_core.config import load_config
from plad_core.stages import run_stage
from tiny import tiny_overrides
overrides = tiny_overrides(Path(sys.argv[1]), Path(sys.argv[2])) + [
    "data.n_unlabeled=8", "teacher.sampling.shard_size=2", "teacher.sampling.batch_size=2",
    "teacher.sampling.max_new_tokens=48", "teacher.prompt.fewshot_k=0"]
cfg = load_config("base", overrides)
print("COMMITTED", run_stage("sample_teacher", cfg, ArtifactStore(Path(cfg.artifacts_root))).path, flush=True)
""".format(tests=str(REPO / "tests"))


def start(root: Path, model: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-c", STAGE, str(root), str(model)], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: Path) -> None:
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]


def committed(root: Path) -> list[Path]:
    return sorted((root / "artifacts" / "sample_teacher").glob("*/manifest.json"))


@pytest.mark.slow
def test_a_killed_sample_teacher_resumes_to_the_uninterrupted_result(tmp_path):
    model = make_tiny_model(tmp_path / "teacher")

    clean_root = tmp_path / "clean"
    proc = start(clean_root, model, tmp_path / "clean.log")
    finish(proc, tmp_path / "clean.log")
    [clean_manifest] = committed(clean_root)
    assert json.loads(clean_manifest.read_text())["stats"]["resumed_shards"] == 0

    root = tmp_path / "killed"
    proc = start(root, model, tmp_path / "killed.log")
    deadline = time.time() + 600
    while not list((root / "artifacts" / "sample_teacher").glob(".work-*/shard-*.parquet")):
        assert proc.poll() is None, "the stage ended before a shard was seen:\n" + (tmp_path / "killed.log").read_text()
        assert time.time() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert committed(root) == [], "killed too late: the artifact was already committed"
    [work] = (root / "artifacts" / "sample_teacher").glob(".work-*")
    shards_at_kill = sorted(p.name for p in work.glob("shard-*.parquet"))
    assert 1 <= len(shards_at_kill) < 4

    proc = start(root, model, tmp_path / "resumed.log")
    finish(proc, tmp_path / "resumed.log")
    [manifest_path] = committed(root)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["stats"]["resumed_shards"] >= len(shards_at_kill) >= 1
    assert manifest["stats"]["shards"] == 4 and manifest["key"] == json.loads(clean_manifest.read_text())["key"]
    assert not work.exists()  # the work dir goes once the artifact is committed

    resumed = pq.read_table(manifest_path.parent / "samples.parquet").to_pylist()
    clean = pq.read_table(clean_manifest.parent / "samples.parquet").to_pylist()
    keys = [(r["id"], r["sample_index"]) for r in resumed]
    assert len(keys) == len(set(keys)) == 8
    assert set(keys) == {(r["id"], r["sample_index"]) for r in clean}
    # the same seeds give the same texts: shards sampled before the kill and after it match the clean run
    assert {(r["id"], r["sample_index"]): r["text"] for r in resumed} == \
        {(r["id"], r["sample_index"]): r["text"] for r in clean}
    assert resumed == clean
