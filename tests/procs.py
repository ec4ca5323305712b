"""Start `python -m matrix_p2p ...` processes for tests; stop them by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e["MX_LOG_LEVEL"] = "info"
    e["MX_LOG_JSON"] = "1"
    return e


def mx(*args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "matrix_p2p", *args], capture_output=True,
                          text=True, timeout=timeout, env=env(), cwd=cwd, stdin=subprocess.DEVNULL)


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop_process(p: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
    """Signal ``p`` by PID (SIGTERM: a drain), SIGKILL it if it lingers; its exit status."""
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return p.returncode


class Proc:
    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self._fh = open(log, "ab")
        self.p = subprocess.Popen([sys.executable, "-m", "matrix_p2p", *args], stdout=self._fh,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env())

    @property
    def pid(self) -> int:
        return self.p.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        code = stop_process(self.p, sig, timeout)
        self._fh.close()
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    try:
        yield started
    finally:
        for p in reversed(started):
            p.stop()
