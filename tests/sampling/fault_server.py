"""Test scaffolding around the project's OpenAI-compatible server (``plad_core.sampling.server``):
its real ``make_server`` and request handling, with a handler that counts requests and injects
faults, so clients' retries can be exercised against a real server. Not part of the library.

    python tests/sampling/fault_server.py --model PATH [the server's flags] [fault flags]

Faults hit generation requests only, counted in arrival order: ``--drop-first N`` closes the
connection of the first N requests without answering, then ``--fail-first N`` answers the next N
with ``--fail-status`` (500; 429 is the other useful one), with ``--retry-after S`` on those
answers when given. ``--faults 429,500,drop,stall`` gives an explicit sequence instead (``stall``:
wait ``--stall-s`` seconds, then close: a client timeout). ``GET /_test/state`` answers the request
counts and the last Authorization header seen (it exposes that header: test keys only).

``serve(model, log_path, *flags)`` runs it in a subprocess on a free 127.0.0.1 port and stops it
by its pid afterwards.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bar per request in the server's log

import logging
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

REPO = Path(__file__).resolve().parents[2]
if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # this checkout's plad_core, whatever is installed

from plad_core import models  # noqa: E402
from plad_core.sampling import server  # noqa: E402


class FaultState(server.ServerState):
    """The server's state plus the fault schedule and the counters ``/_test/state`` reports."""

    def __init__(self, model: Any, tokenizer: Any, name: str, faults: list[str], retry_after: Optional[str] = None,
                 stall_s: float = 5.0, api_key: Optional[str] = None):
        super().__init__(model, tokenizer, name, api_key)
        self.faults = list(faults)
        self.retry_after, self.stall_s = retry_after, stall_s
        self.state_lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.arrivals = 0
        self.last_authorization: Optional[str] = None

    def arrive(self, path: str, authorization: Optional[str]) -> Optional[str]:
        """Count a generation request; return the fault to inject for it, if any."""
        with self.state_lock:
            self.requests[path] += 1
            self.last_authorization = authorization
            fault = self.faults[self.arrivals] if self.arrivals < len(self.faults) else None
            self.arrivals += 1
            if fault:
                self.injected[fault] += 1
            return fault

    def snapshot(self) -> dict[str, Any]:
        with self.state_lock:
            return {"requests": dict(self.requests), "arrivals": self.arrivals, "injected": dict(self.injected),
                    "last_authorization": self.last_authorization}


class FaultHandler(server.Handler):
    state: FaultState

    def _drop(self) -> None:
        """Close the connection without a byte of answer (what a crashed proxy or server does)."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def intercept(self, path: str) -> bool:
        fault = self.state.arrive(path, self.headers.get("Authorization"))
        if fault is None or not self._authorized():  # a wrong key is answered 401 by the server, fault or not
            return False
        if fault == "drop":
            self._drop()
        elif fault == "stall":
            time.sleep(self.state.stall_s)
            self._drop()
        else:
            headers = {"Retry-After": self.state.retry_after} if self.state.retry_after is not None else None
            self._error(int(fault), f"injected fault: HTTP {fault}", headers)
        return True

    def extra_get(self, path: str) -> bool:
        if path != "/_test/state":
            return False
        self._send(200, self.state.snapshot())
        return True


def fault_schedule(faults: Optional[str], drop_first: int, fail_first: int, fail_status: int) -> list[str]:
    if faults:
        schedule = [f.strip() for f in faults.split(",") if f.strip()]
        bad = [f for f in schedule if f not in ("drop", "stall") and not (f.isdigit() and 400 <= int(f) <= 599)]
        if bad:
            raise ValueError(f"--faults: {bad} are not drop, stall or an HTTP status 400-599")
        return schedule
    return ["drop"] * drop_first + [str(fail_status)] * fail_first


def main(argv: Optional[list[str]] = None) -> None:
    p = server.parser()
    p.prog = "python tests/sampling/fault_server.py"
    p.add_argument("--drop-first", type=int, default=0, metavar="N")
    p.add_argument("--fail-first", type=int, default=0, metavar="N")
    p.add_argument("--fail-status", type=int, default=500)
    p.add_argument("--retry-after", default=None, metavar="SECONDS", help="Retry-After on injected failures")
    p.add_argument("--faults", default=None, help="explicit fault sequence, e.g. 429,500,drop,stall")
    p.add_argument("--stall-s", type=float, default=5.0)
    args = p.parse_args(argv)
    if args.faults and (args.drop_first or args.fail_first):
        p.error("--faults replaces --drop-first/--fail-first; give one or the other")
    try:
        faults = fault_schedule(args.faults, args.drop_first, args.fail_first, args.fail_status)
    except ValueError as err:
        p.error(str(err))
    api_key = server.api_key_from(p, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    models.set_threads(args.threads)
    try:
        model, tokenizer = server.load(args)
    except (ValueError, models.ModelError) as err:
        p.error(str(err))
    state = FaultState(model, tokenizer, args.served_model_name or args.model, faults, args.retry_after,
                       args.stall_s, api_key)
    server.serve(server.make_server(state, args.host, args.port, FaultHandler), state.name)


@contextmanager
def serve(model: Path, log_path: Path, *flags: str, env: Optional[dict] = None) -> Iterator[str]:
    """This server in a subprocess on a free 127.0.0.1 port, its base URL; stopped by its pid afterwards."""
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--model", str(model), "--host", "127.0.0.1",
             "--port", "0", "--dtype", "float32", "--threads", "1", *flags],
            cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})})
    try:
        deadline = time.time() + 180
        while not (match := re.search(r"at (http://127\.0\.0\.1:\d+/v1)", log_path.read_text())):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"server did not start (exit {proc.poll()}):\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield match.group(1)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def server_state(base_url: str) -> dict:
    import httpx
    return httpx.get(base_url.removesuffix("/v1") + "/_test/state", timeout=10).json()


if __name__ == "__main__":
    main()
