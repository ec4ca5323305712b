"""Real processes for chaos tests: `python -m matrix_p2p ...` children, stopped by PID.

Every scenario ends with ``check_exactly_once``: every submitted task id is in
the sink's output exactly once, as done or failed, and the results stream
holds exactly one result per task (the sink's own dedup cannot hide a double).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from matrix_p2p.runtime.source import iter_rows, task_id
from matrix_p2p.workflow import loader

ROOT = Path(__file__).resolve().parents[2]  # the repository root (agents/, tests/)


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["MX_LOG_LEVEL"] = "info"
    env["MX_LOG_JSON"] = "1"
    env.update(extra)
    return env


def mx(*args: str, timeout: float = 120, env: dict[str, str] | None = None
       ) -> subprocess.CompletedProcess[str]:
    """Run one command to completion (bounded by ``timeout``)."""
    return subprocess.run([sys.executable, "-m", "matrix_p2p", *args], capture_output=True,
                          text=True, timeout=timeout, env=env or child_env(),
                          stdin=subprocess.DEVNULL, cwd=ROOT)


class Proc:
    """A long-running child; ``restart`` starts the same command again (same log file)."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log = log
        self.env = env or child_env()
        self.p: subprocess.Popen[bytes] | None = None
        self.kills = 0
        self.start()

    def start(self) -> Proc:
        with open(self.log, "ab") as fh:
            self.p = subprocess.Popen([sys.executable, "-m", "matrix_p2p", *self.args],
                                      stdout=fh, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=self.env, cwd=ROOT)
        return self

    @property
    def pid(self) -> int:
        assert self.p is not None
        return self.p.pid

    def wait_started(self, event: str, timeout: float = 60.0) -> None:
        """Until the running process (not an earlier start: one may have been killed before
        it was ready) has logged ``event`` with its pid. A SIGTERM that comes before the
        process installs its handler is a plain kill, not a drain."""
        wait_for(lambda: any(e.get("pid") == self.pid for e in self.events(event)), timeout,
                 f"{event} from {self.args[0]} (pid {self.pid})")

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def kill9(self) -> None:
        """SIGKILL by PID: a crash with no chance to clean up."""
        assert self.p is not None
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGKILL)
            self.kills += 1
        self.p.wait(timeout=10)

    def restart(self) -> None:
        self.kill9()
        self.start()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (drain), then SIGKILL if it lingers."""
        if self.p is None:
            return None
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return self.p.returncode

    def wait(self, timeout: float) -> int:
        assert self.p is not None
        return self.p.wait(timeout=timeout)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.text().splitlines():
            if f'"{name}"' in line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a line torn by SIGKILL
        return out


@contextmanager
def processes() -> Iterator[list[Proc]]:
    """Every Proc appended here is stopped (by PID) when the block ends, whatever happened."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        for p in reversed(started):
            p.stop(timeout=15)


def wait_for(cond: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> None:
    """Poll a condition on files or processes until it holds, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.endswith(b"\n"))


def write_workflow(tmp: Path, name: str, body: str, rows: list[dict[str, Any]]) -> Path:
    (tmp / f"{name}-rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    wf = tmp / f"{name}.yaml"
    wf.write_text(f"name: {name}\nsource: {{path: {name}-rows.jsonl}}\n" + body)
    return wf


def expected_ids(workflow: Path) -> set[str]:
    spec = loader.load(str(workflow))
    return {task_id(row.key, t) for row in iter_rows(spec) for t in range(spec.trials)}


def read_rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def check_exactly_once(out: Path, expected: set[str], status: dict[str, Any] | None = None,
                       extra: set[str] = frozenset()) -> Counter[str]:  # type: ignore[assignment]
    """The invariant. Returns the count of rows per status."""
    rows = read_rows(out)
    ids = Counter(r["id"] for r in rows)
    doubled = {i: n for i, n in ids.items() if n > 1}
    assert not doubled, f"tasks written more than once: {sorted(doubled)[:10]}"
    missing = (expected | extra) - set(ids)
    assert not missing, f"{len(missing)} tasks lost: {sorted(missing)[:10]}"
    unknown = set(ids) - expected - extra
    assert not unknown, f"rows for tasks never submitted: {sorted(unknown)[:10]}"
    statuses = Counter(r["status"] for r in rows)
    assert set(statuses) <= {"done", "failed"}, statuses
    assert all(r["error"] for r in rows if r["status"] == "failed")
    if status is not None:
        # the results stream itself, not just the deduplicating sink: one result per task
        assert status["done"] + status["failed"] == len(expected | extra), status
        assert status["live_tasks"] == 0, status
    return statuses


def status_json(workflow: Path, url: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    r = mx("status", str(workflow), "--nats", url, "--json", "--sample", "0", env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    result: dict[str, Any] = json.loads(r.stdout)
    return result


def chaos_rng() -> random.Random:
    """Seeded from MX_CHAOS_SEED (printed, so a failure can be replayed) or the clock."""
    seed = int(os.environ.get("MX_CHAOS_SEED", str(int(time.time()))))
    print(f"chaos seed: MX_CHAOS_SEED={seed}")
    return random.Random(seed)
