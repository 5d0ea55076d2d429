"""The supervisor that stops torchrun and its ranks on a timeout or when the launching process dies, and
torchrun in a private network namespace."""

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from plad_core.training import torchrun

# A rank that reports its pid and then sleeps; it watches its supervisor like the real worker.
SLEEPER = """
import os, sys, time
from pathlib import Path
from plad_core.training.torchrun import watch_supervisor
watch_supervisor(poll_s=0.2)
Path(sys.argv[1], "rank-" + os.environ["RANK"] + ".pid").write_text(str(os.getpid()))
# One write per line: the ranks share torchrun's pipe, and with PYTHONUNBUFFERED print() writes each
# argument on its own, so two ranks' words interleaved ("rankrank 1  0ready").
sys.stdout.write("rank " + os.environ["RANK"] + " ready\\n")
time.sleep(600)
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for_ranks(folder: Path, proc: subprocess.Popen | None = None, timeout_s: float = 120) -> list[int]:
    deadline = time.time() + timeout_s
    while len(files := sorted(folder.glob("rank-*.pid"))) < 2:
        assert proc is None or proc.poll() is None, "the launching process ended early"
        assert time.time() < deadline, "the ranks never started"
        time.sleep(0.05)
    time.sleep(0.1)  # both files are complete
    return [int(f.read_text()) for f in files]


def wait_until_gone(pids: list[int], timeout_s: float = 30) -> list[int]:
    """The pids still alive after ``timeout_s``; those are then killed, so a failing test leaves none."""
    deadline = time.time() + timeout_s
    while (alive := [p for p in pids if not gone(p)]) and time.time() < deadline:
        time.sleep(0.1)
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    return alive


@pytest.mark.slow
def test_the_supervisor_stops_torchrun_and_every_rank_on_timeout(tmp_path, caplog):
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    caplog.set_level(logging.INFO, logger="test.supervise")
    started = time.time()
    with pytest.raises(TimeoutError, match="still running after 12s"):
        torchrun.supervise(torchrun.torchrun_command(2, [str(script), str(tmp_path)]), logging.getLogger("test.supervise"),
                           timeout_s=12, env=torchrun.local_env(), grace_s=5)
    assert time.time() - started < 12 + 5 + 10
    messages = [r.getMessage() for r in caplog.records if r.name == "test.supervise"]
    torchrun_pid = int(re.search(r"started pid (\d+)", messages[0]).group(1))
    ranks = wait_for_ranks(tmp_path, timeout_s=0)  # both ranks had started (and said so) before the timeout
    assert {"rank 0 ready", "rank 1 ready"} <= set(messages)
    assert wait_until_gone([torchrun_pid, *ranks], timeout_s=0) == []


# The launching process: supervises torchrun with no timeout, until it is killed.
PARENT = """
import logging, sys
from plad_core.training import torchrun
logging.basicConfig(level=logging.INFO)
torchrun.supervise(torchrun.torchrun_command(2, sys.argv[1:]), logging.getLogger("parent"), env=torchrun.local_env())
"""


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["cancelled", "killed"])
def test_ranks_end_when_the_launching_process_is_cancelled_or_killed(tmp_path, how):
    """SIGINT: KeyboardInterrupt in the waiting thread, as a cancel raises there; the supervisor stops
    the tree itself. SIGKILL: no cleanup runs in the parent; the ranks notice it is gone."""
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    # SIGINT default and unblocked in the child: an ignored or blocked SIGINT is inherited, and in the
    # whole suite (not alone) the child never raised KeyboardInterrupt, so an earlier test leaves one of them.
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(script), str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_default_sigint)
    try:
        ranks = wait_for_ranks(tmp_path, parent)
        [torchrun_proc] = psutil.Process(parent.pid).children()
        os.kill(parent.pid, how)
        assert parent.wait(timeout=120) != 0
        assert wait_until_gone([torchrun_proc.pid, *ranks]) == []
    finally:
        if parent.poll() is None:
            parent.kill()


# Two gloo ranks that all-reduce their rank ids, then hold the job open so its sockets can be inspected.
ALL_REDUCE = """
import sys, time, torch, torch.distributed as dist
from pathlib import Path
dist.init_process_group("gloo")
total = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(total)
Path(sys.argv[1], f"rank{dist.get_rank()}.sum").write_text(str(total.item()))
time.sleep(3)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_torchrun_runs_in_a_private_network_namespace_and_listens_on_nothing_here(tmp_path):
    if not torchrun.private_network_prefix():
        pytest.skip("this machine allows no network namespace (unshare --net)")
    script = tmp_path / "all_reduce.py"
    script.write_text(ALL_REDUCE)
    port = torchrun.free_port()
    command = torchrun.torchrun_command(2, [str(script), str(tmp_path)], port=port)
    assert command[0] == "unshare"
    listening = []
    job = subprocess.Popen(command, env=torchrun.local_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        while job.poll() is None:
            # /proc/net/tcp is per network namespace: the job's rendezvous store must not show up in ours.
            listening += [c.laddr for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port]
            time.sleep(0.2)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 0
    assert [(tmp_path / f"rank{r}.sum").read_text() for r in (0, 1)] == ["3.0", "3.0"]
    assert listening == []
