import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from plad_core.artifacts import MANIFEST, ArtifactStore, artifact_key


def writer(text):
    calls = []

    def build(out, work):
        calls.append(1)
        (out / "payload.txt").write_text(text)
        return {"rows": 1}
    return build, calls


def test_key_depends_on_every_input():
    base = artifact_key("s", "c1", {"a": 1}, {"up": "k"})
    assert base == artifact_key("s", "c1", {"a": 1}, {"up": "k"})
    assert len({base, artifact_key("t", "c1", {"a": 1}, {"up": "k"}), artifact_key("s", "c2", {"a": 1}, {"up": "k"}),
                artifact_key("s", "c1", {"a": 2}, {"up": "k"}), artifact_key("s", "c1", {"a": 1}, {"up": "j"})}) == 5


def test_materialize_commits_manifest_and_reuses(tmp_path):
    store = ArtifactStore(tmp_path)
    build, calls = writer("hello")
    first = store.materialize("stage", 1, {"x": 1}, {}, build)
    again = store.materialize("stage", 1, {"x": 1}, {}, build)
    assert calls == [1] and again.path == first.path
    manifest = json.loads((first.path / MANIFEST).read_text())
    assert manifest["stats"] == {"rows": 1} and manifest["config"] == {"x": 1}
    assert manifest["files"]["payload.txt"]["bytes"] == 5
    assert "torch" in manifest["libraries"]
    leftovers = sorted(p.name for p in (tmp_path / "stage").iterdir() if not p.name.startswith(".lock-"))
    assert leftovers == [first.key]  # no temp or work dirs left


def test_force_rebuilds(tmp_path):
    store = ArtifactStore(tmp_path)
    build, calls = writer("hello")
    store.materialize("stage", 1, {}, {}, build)
    store.materialize("stage", 1, {}, {}, build, force=True)
    assert calls == [1, 1]


def test_damaged_payload_is_reported_and_recomputed(tmp_path, caplog):
    store = ArtifactStore(tmp_path)
    build, calls = writer("hello world")
    art = store.materialize("stage", 1, {}, {}, build)
    (art.path / "payload.txt").write_text("hello")             # truncated
    with caplog.at_level(logging.WARNING, logger="plad.artifacts"):
        again = store.materialize("stage", 1, {}, {}, build)
    assert calls == [1, 1]
    assert "payload.txt has 5 bytes" in caplog.text
    assert (again.path / "payload.txt").read_text() == "hello world"
    (again.path / "payload.txt").write_text("jello world")     # same size, edited
    assert "sha256" in store.verify("stage", again.key)


def test_failed_build_leaves_nothing_that_looks_finished(tmp_path):
    store = ArtifactStore(tmp_path)

    def boom(out, work):
        (out / "half.txt").write_text("partial")
        raise RuntimeError("crash")
    with pytest.raises(RuntimeError, match="crash"):
        store.materialize("stage", 1, {}, {}, boom)
    assert store.get("stage", artifact_key("stage", 1, {}, {})) is None
    assert not list((tmp_path / "stage").glob("*/" + MANIFEST))


def test_killed_build_leaves_no_artifact_and_reruns_cleanly(tmp_path):
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from plad_core.artifacts import ArtifactStore
        def build(out, work):
            (out / "half.txt").write_text("partial")
            Path({str(tmp_path / 'started')!r}).touch()
            time.sleep(60)
        ArtifactStore({str(tmp_path / 'store')!r}).materialize("stage", 1, {{}}, {{}}, build)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while not (tmp_path / "started").exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = ArtifactStore(tmp_path / "store")
    key = artifact_key("stage", 1, {}, {})
    assert store.get("stage", key) is None
    names = [p.name for p in (tmp_path / "store" / "stage").iterdir() if p.name not in (f".work-{key}", f".lock-{key}")]
    assert len(names) == 1 and names[0].startswith(f".tmp-{key}")
    build, calls = writer("done")
    assert (store.materialize("stage", 1, {}, {}, build).path / "payload.txt").read_text() == "done"


def test_concurrent_runs_build_once_and_both_get_the_artifact(tmp_path):
    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from plad_core.artifacts import ArtifactStore
        def build(out, work):
            with open({str(tmp_path / 'builds')!r}, "a") as fh:
                fh.write(f"{{os.getpid()}}\\n")
            time.sleep(2)
            (out / "payload.txt").write_text("once")
        art = ArtifactStore({str(tmp_path / 'store')!r}).materialize("stage", 1, {{}}, {{}}, build)
        print(art.key, (art.path / "payload.txt").read_text())
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len((tmp_path / "builds").read_text().split()) == 1
    assert outputs[0] == outputs[1] == f"{artifact_key('stage', 1, {}, {})} once"
