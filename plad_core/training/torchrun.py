"""Calibration under ``torchrun``: supervised subprocesses, the launching side (``run``) and what each
rank runs (``main``).

``run`` writes the resolved config and the pairs into the stage's work folder and starts
``torchrun --nproc-per-node N -m plad_core.training.torchrun`` under ``supervise``. Each rank
joins the process group, loads the config, the pairs and the SFT student from those paths and
calls the same ``training.calibrate.calibrate_student`` as a one-process run; rank 0 writes the model and the
log into the stage's output folder and the stats into the work folder.

torchrun and its ranks run as children that are always stopped. A plain
``subprocess.run(["torchrun", ...])`` left ranks running after a cancel or a crash: torchrun starts
each rank in a session of its own, so neither the parent's death nor a signal to torchrun's process
group reaches them. ``supervise`` therefore

- starts the command in a new session and streams its stdout and stderr, line by line, into a logger;
- on a timeout, a cancel or any other exception in the waiting thread, sends SIGTERM to the
  command's process group and to every descendant it has (collected before anything is signalled),
  then SIGKILL to those still alive after ``grace_s``;
- tells the children its pid (``PLAD_SUPERVISOR_PID``): a worker that calls ``watch_supervisor``
  ends itself as soon as the supervisor, or its own parent, is gone, so a supervisor killed with
  SIGKILL (no ``finally`` runs) leaves no orphans either.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import psutil

# torch, pandas, omegaconf and the training code are imported by ``run`` and ``main`` only: every
# rank imports this module for ``watch_supervisor`` first, and two ranks importing torch and
# transformers on a 2-core machine outlasted a short supervision timeout.
if TYPE_CHECKING:
    import pandas as pd
    from omegaconf import DictConfig

SUPERVISOR_ENV = "PLAD_SUPERVISOR_PID"
log = logging.getLogger("plad.launch")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for torchrun's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Runs the rest of the command line in a new network namespace whose only interface is loopback.
_LOOPBACK_ONLY = ["sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


@functools.lru_cache(maxsize=1)
def private_network_prefix() -> tuple[str, ...]:
    """The command prefix that runs a program in a private network namespace (loopback only), or ()
    where this machine does not allow one (no ``unshare``/``ip``, or user namespaces disabled).

    torch's rendezvous store (TCPStore) listens on every interface and has no bind-address option;
    inside such a namespace every interface is loopback, so nothing a single-node job opens is
    reachable from the network."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return ()
    for unshare in (["unshare", "--net", "--"], ["unshare", "--map-root-user", "--net", "--"]):
        probe = subprocess.run([*unshare, *_LOOPBACK_ONLY, "true"], capture_output=True)
        if probe.returncode == 0:
            return (*unshare, *_LOOPBACK_ONLY)
    return ()


def torchrun_command(nproc: int, program: Sequence[str], port: Optional[int] = None,
                     private_network: bool = True) -> list[str]:
    """``torchrun --nproc-per-node N <program>`` (``["-m", module, *args]`` or ``[script, *args]``) on
    this machine, its rendezvous on 127.0.0.1, no restarts (a failed rank fails the run; the stage's
    checkpoints let a rerun resume). With ``private_network`` it runs in a loopback-only network
    namespace where the machine allows one (``private_network_prefix``; a warning where not)."""
    prefix: tuple[str, ...] = ()
    if private_network:
        prefix = private_network_prefix()
        if not prefix:
            log.warning("no private network namespace here (unshare --net not permitted): torch's rendezvous "
                        "store will listen on every interface while the job runs")
    return [*prefix, sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--nnodes=1",
            "--master-addr=127.0.0.1", f"--master-port={port or free_port()}", "--max-restarts=0", *program]


def local_env() -> dict[str, str]:
    """The environment for ranks on one machine: collectives over the loopback interface, output
    unbuffered (it is streamed line by line), and this process's pid for ``watch_supervisor``."""
    env = dict(os.environ)
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env.setdefault("NCCL_SOCKET_IFNAME", "lo")
    env.update(PYTHONUNBUFFERED="1", **{SUPERVISOR_ENV: str(os.getpid())})
    return env


def _stream(pipe, logger: logging.Logger, prefix: str, tail: deque) -> None:
    for line in iter(pipe.readline, ""):
        line = line.rstrip("\n")
        tail.append(line)
        logger.info("%s%s", prefix, line)
    pipe.close()


def stop_tree(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM to ``proc``'s process group and all its descendants, SIGKILL to any left after ``grace_s``."""
    try:
        root = psutil.Process(proc.pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    proc.wait()


def supervise(cmd: Sequence[str], logger: logging.Logger, *, timeout_s: float = 0, env: Optional[dict] = None,
              cwd: Optional[Path] = None, prefix: str = "", grace_s: float = 10.0) -> None:
    """Run ``cmd`` to completion under supervision (see the module doc); ``timeout_s`` 0 waits forever.

    Raises TimeoutError after ``timeout_s`` and RuntimeError, with the last lines of output, on a
    non-zero exit; the process tree is stopped first in both cases, and on any other exception.
    """
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, errors="replace", start_new_session=True, env=env, cwd=cwd)
    tail: deque = deque(maxlen=40)
    reader = threading.Thread(target=_stream, args=(proc.stdout, logger, prefix, tail), daemon=True)
    reader.start()
    logger.info("%sstarted pid %d: %s", prefix, proc.pid, " ".join(cmd))
    try:
        proc.wait(timeout=timeout_s or None)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"{prefix}{cmd[0]} ... still running after {timeout_s:g}s; stopped it and its children") \
            from None
    finally:
        if proc.poll() is None:
            stop_tree(proc, grace_s)
        reader.join(timeout=5)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited with {proc.returncode}; last output:\n" + "\n".join(tail))


def watch_supervisor(poll_s: float = 1.0) -> None:
    """In a supervised child: end this process (exit code 1) once the supervisor named by
    ``PLAD_SUPERVISOR_PID`` or this process's parent is gone. No-op without the variable."""
    pid = os.environ.get(SUPERVISOR_ENV)
    if not pid:
        return
    parent = os.getppid()
    try:
        supervisor = psutil.Process(int(pid))
    except psutil.NoSuchProcess:
        os._exit(1)

    def alive() -> bool:
        try:
            return supervisor.is_running() and supervisor.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def watch() -> None:
        while alive() and os.getppid() == parent:
            time.sleep(poll_s)
        try:
            print(f"pid {os.getpid()}: supervisor {pid} or parent {parent} is gone; exiting", file=sys.stderr, flush=True)
        except OSError:  # the supervisor read our output: with it gone, the pipe is broken
            pass
        os._exit(1)

    threading.Thread(target=watch, name="watch-supervisor", daemon=True).start()


# --- calibration on N ranks ---------------------------------------------------------------------

STATS = "stats.json"


def run(cfg: DictConfig, frame: pd.DataFrame, student_dir: Path, out: Path, work: Path,
        logger: logging.Logger) -> dict[str, Any]:
    """Calibrate on ``cfg.train.launch.nproc`` ranks; returns rank 0's stats."""
    from omegaconf import OmegaConf

    config_path, pairs_path = work / "config.yaml", work / "pairs.parquet"
    config_path.write_text(OmegaConf.to_yaml(cfg))
    frame.to_parquet(pairs_path, index=False)
    args = ["--config", str(config_path), "--pairs", str(pairs_path), "--student", str(student_dir),
            "--out", str(out), "--work", str(work)]
    n = cfg.train.launch.nproc
    command = torchrun_command(n, ["-m", __name__, *args], private_network=cfg.train.launch.private_network)
    supervise(command, logger, timeout_s=cfg.train.launch.timeout_s, env=local_env(), prefix=f"torchrun x{n}: ")
    return json.loads((work / STATS).read_text())


def main(argv: Optional[list[str]] = None) -> None:
    watch_supervisor()
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("config", "pairs", "student", "out", "work"):
        parser.add_argument(f"--{name}", required=True)
    args = parser.parse_args(argv)
    import pandas as pd
    import torch
    import torch.distributed as dist

    from plad_core import models
    from plad_core.config import load_config
    from plad_core.training import distributed
    from plad_core.training.calibrate import calibrate_student
    cfg = load_config(args.config)
    device = distributed.init_from_env(models.resolve_device(cfg.device).type == "cuda")
    r = distributed.ranks()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format=f"rank {r.rank} %(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, [f"device={device}"])
    # torchrun sets OMP_NUM_THREADS=1; with threads: 0 the ranks share the machine's cores instead
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // r.world))
    stats = calibrate_student(cfg, pd.read_parquet(args.pairs), Path(args.student), Path(args.out),
                              Path(args.work))
    if r.rank == 0:
        (Path(args.work) / STATS).write_text(json.dumps(stats))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
