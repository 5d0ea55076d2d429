"""The deployments distill/tldr and distill/hh against a real Prefect server, no mocks.

One server per module: `prefect server start` on a free 127.0.0.1 port with its own PREFECT_HOME and
SQLite database under tmp, and `python -m flows.deploy` serving both deployments with the tiny
pipeline (tests/tiny.py) as their default overrides. Runs are triggered with the real CLI,
`prefect deployment run`, exactly as a user does. Both processes (and every flow-run process the
runner starts) are ended by process group in teardown, which fails if any of them outlives it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from tiny import make_tiny_model, tiny_overrides

from plad_core.artifacts import MANIFEST, ArtifactStore
from plad_core.registry import Registry
from plad_core.stages import DEPENDENCIES

REPO = Path(__file__).resolve().parent.parent
PREFECT = Path(sys.executable).parent / "prefect"
STAGES = list(DEPENDENCIES)
RUN_TIMEOUT = 300  # seconds for one flow run, from trigger to a terminal state


@dataclass
class Served:
    api: str
    env: dict[str, str]
    root: Path
    overrides: list[str]
    server_log: Path
    serve_log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, n: int = 60) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return f"--- last {n} lines of {path} ---\n" + "\n".join(lines[-n:])


def _ours(token: str) -> list[int]:
    """Pids of live processes whose environment carries this module's token (server, runner, flow runs)."""
    needle = f"PLAD_TEST_SERVE_TOKEN={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def _stop(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM to the process group, SIGKILL after `grace` seconds; reaps the leader."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)  # started with start_new_session: pgid == pid
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; flow-run children in its group may still be ending.
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def _get(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _get(url):
        if proc.poll() is not None:
            pytest.fail(f"process exited with {proc.returncode} before {url} answered\n{_tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"{url} did not answer within {timeout:.0f}s\n{_tail(log)}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("deployments")
    overrides = tiny_overrides(root, make_tiny_model(root / "teacher", layers=4))
    home = root / "prefect-home"
    home.mkdir()
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PLAD_TEST_SERVE_TOKEN": token,  # marks every process started from here, for the orphan check
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        # The scheduler's loops (60 s and 5 s by default) run every second or two here.
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "1",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    })
    server_log, serve_log = root / "server.log", root / "serve.log"
    procs = []
    try:
        with open(server_log, "w") as out:
            server = subprocess.Popen([str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                      cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        procs.append(server)
        _wait_for(f"{api}/health", server, server_log, timeout=120)

        with open(serve_log, "w") as out:
            runner = subprocess.Popen([sys.executable, "-m", "flows.deploy", "--default-overrides", json.dumps(overrides)],
                                      cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        procs.append(runner)
        for name in ("distill/tldr", "distill/hh"):
            _wait_for(f"{api}/deployments/name/{name}", runner, serve_log, timeout=120)

        yield Served(api, env, root, overrides, server_log, serve_log)
    finally:
        for proc in reversed(procs):  # the runner first, so it can still reach the server
            _stop(proc)
        left = _ours(token)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert not left, f"processes outlived teardown (killed now): {left}"


@contextlib.contextmanager
def _client(served: Served):
    """A synchronous Prefect client for the test server (this process's own settings left as they are)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: served.api}), get_client(sync_client=True) as client:
        yield client


def _trigger(served: Served, *args: str) -> subprocess.Popen:
    """`prefect deployment run distill/tldr ARGS`, the real CLI, started (not awaited)."""
    return subprocess.Popen([str(PREFECT), "deployment", "run", "distill/tldr", *args], cwd=REPO, env=served.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run_id(proc: subprocess.Popen) -> uuid.UUID:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"prefect deployment run failed:\n{out}"
    found = re.search(r"UUID: ([0-9a-f-]{36})", out)
    assert found, f"no flow run id in:\n{out}"
    return uuid.UUID(found.group(1))


def _wait_terminal(served: Served, run_ids: list[uuid.UUID], timeout: float = RUN_TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    with _client(served) as client:
        while True:
            runs = {i: client.read_flow_run(i) for i in run_ids}
            if all(r.state is not None and r.state.is_final() for r in runs.values()):
                return runs
            if time.monotonic() > deadline:
                states = {str(i): (r.state.name if r.state else None) for i, r in runs.items()}
                pytest.fail(f"flow runs not terminal after {timeout:.0f}s: {states}\n{_tail(served.serve_log)}")
            time.sleep(1)


def _assert_completed(served: Served, runs: dict) -> None:
    bad = {str(i): (r.state.name, r.state.message) for i, r in runs.items() if not r.state.is_completed()}
    assert not bad, f"flow runs did not complete: {bad}\n{_tail(served.serve_log, 120)}"


def _committed(root: Path, stage: str) -> list[Path]:
    return sorted(p for p in (root / stage).iterdir() if not p.name.startswith("."))


@pytest.mark.slow
def test_server_schedules_nightly_runs_at_0300_utc(served):
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    now = datetime.datetime.now(datetime.timezone.utc)
    with _client(served) as client:
        for name, config in (("distill/tldr", "tldr"), ("distill/hh", "hh")):
            deployment = client.read_deployment_by_name(name)
            assert deployment.parameters == {"config": config, "overrides": served.overrides}
            assert not deployment.paused
            [schedule] = deployment.schedules
            assert schedule.active
            assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 3 * * *", "UTC")

            deadline = time.monotonic() + 60
            while True:  # the scheduler service, not the runner, creates these runs
                runs = [r for r in client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                    flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
                    sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=50) if r.auto_scheduled]
                if len(runs) >= 3 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert len(runs) >= 3, (f"{name}: {len(runs)} scheduled runs after 60s\n"
                                    f"{_tail(served.server_log)}")
            starts = [r.expected_start_time.astimezone(datetime.timezone.utc) for r in runs]
            assert all((s.hour, s.minute, s.second) == (3, 0, 0) for s in starts), starts
            assert starts[0] > now and starts[0] - now <= datetime.timedelta(days=1), starts[0]
            assert all(b - a == datetime.timedelta(days=1) for a, b in zip(starts, starts[1:])), starts
            assert all(r.parameters == {"config": config, "overrides": served.overrides} for r in runs)
    assert "Error scheduling deployment" not in served.server_log.read_text()


@pytest.mark.slow
def test_deployment_run_from_the_cli_completes_and_commits_artifacts(served):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    started = time.monotonic()
    run_id = _run_id(_trigger(served))
    runs = _wait_terminal(served, [run_id])
    _assert_completed(served, runs)
    run = runs[run_id]
    assert run.parameters == {"config": "tldr", "overrides": served.overrides}
    assert run.start_time is not None and run.start_time - run.expected_start_time < datetime.timedelta(seconds=60)

    artifacts = served.root / "artifacts"
    for stage in STAGES:
        [committed] = _committed(artifacts, stage)
        assert (committed / MANIFEST).is_file()
    [evaluate] = _committed(artifacts, "evaluate")
    metrics = json.loads((evaluate / "metrics.json").read_text())  # its layout is test_flow's business
    assert isinstance(metrics, dict) and metrics
    assert (evaluate / "results.md").is_file()

    with _client(served) as client:
        table = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    by_key = {a.key: a for a in table}
    assert sorted(by_key) == ["distill-results", "distill-results-table", "evaluate-progress"]
    assert by_key["distill-results"].data == (evaluate / "results.md").read_text()
    assert by_key["evaluate-progress"].data == 100.0
    assert time.monotonic() - started < RUN_TIMEOUT


@pytest.mark.slow
def test_two_concurrent_runs_share_one_artifact_per_key(served):
    # A fresh artifacts root so both runs build (not reuse) and meet at every stage's lock.
    root = served.root / "concurrent" / "artifacts"
    overrides = [o for o in served.overrides if not o.startswith("artifacts_root=")] + [f"artifacts_root={root}"]
    param = f"overrides={json.dumps(overrides)}"
    triggers = [_trigger(served, "-p", param) for _ in range(2)]
    run_ids = [_run_id(t) for t in triggers]
    runs = _wait_terminal(served, run_ids)
    _assert_completed(served, runs)
    assert all(r.parameters["overrides"] == overrides for r in runs.values())
    # Both ran at the same time: each started before the other ended.
    (a, b) = runs.values()
    assert a.start_time < b.end_time and b.start_time < a.end_time, (a.start_time, a.end_time, b.start_time, b.end_time)

    store = ArtifactStore(root)
    # Beside the stages: evaluate's per-model dev outputs (teacher, SFT and PLaD student), one folder each,
    # its judge verdicts (one artifact for all three), and the registry's copy of the champion (models/).
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted([*STAGES, "dev_outputs", "judgments", "models"])
    assert len(_committed(root, "dev_outputs")) == 3 and len(_committed(root, "judgments")) == 1
    for stage in STAGES:
        committed = _committed(root, stage)
        assert len(committed) == 1, f"{stage}: {[p.name for p in committed]}"
        key = committed[0].name
        assert json.loads((committed[0] / MANIFEST).read_text())["key"] == key
        assert store.verify(stage, key) is None
        leftovers = [p.name for p in (root / stage).iterdir() if p.name.startswith((".tmp-", ".work-"))]
        assert not leftovers, f"{stage}: {leftovers}"
    # Each run recorded its own promotion decision in the shared SQLite registry.
    history = Registry(root / "registry.sqlite").history()
    assert sorted(history["run_id"]) == sorted(str(i) for i in run_ids)
    assert sorted(history["promoted"]) == [0, 1]  # one champion: the other run decided after it, in its own transaction


def test_build_deployments_defaults():
    from flows.deploy import build_deployments

    deployments = build_deployments(overrides=["train.beta=0.5"])
    assert [(d.flow_name, d.name) for d in deployments] == [("distill", "tldr"), ("distill", "hh")]
    for deployment, config in zip(deployments, ("tldr", "hh")):
        assert deployment.parameters == {"config": config, "overrides": ["train.beta=0.5"]}
        [schedule] = deployment.schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == ("0 3 * * *", "UTC", True)
        assert deployment.entrypoint == "flows.distill.distill"
    with pytest.raises(ValueError, match="cron"):
        build_deployments(cron="every night")
    with pytest.raises(ValueError, match="timezone"):
        build_deployments(timezone="Mars/Olympus_Mons")


def test_default_overrides_must_be_a_json_list_of_strings():
    from flows.deploy import build_parser

    parser = build_parser()
    assert parser.parse_args(["--default-overrides", '["a=1", "b=2"]']).default_overrides == ["a=1", "b=2"]
    assert parser.parse_args([]).cron == "0 3 * * *"
    for bad in ("a=1", '{"a": 1}', "[1]"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--default-overrides", bad])
