"""Child processes of the bench: started with their own session, stopped by PID."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("MX_LOG_LEVEL", "info")
    env["MX_LOG_JSON"] = "1"
    return env


class Child:
    """One child process whose output is drained; ``ready`` is set on a marker line."""

    def __init__(self, args: Sequence[str], marker: str, name: str) -> None:
        self.args = list(args)
        self.marker = marker
        self.name = name
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.tail: list[str] = []
        self._drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 60.0) -> Child:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=child_env(), cwd=str(ROOT),
            start_new_session=True,
        )
        self._drain = asyncio.create_task(self._read())
        try:
            async with asyncio.timeout(timeout):
                done = asyncio.ensure_future(self.proc.wait())
                ready = asyncio.ensure_future(self.ready.wait())
                await asyncio.wait([done, ready], return_when=asyncio.FIRST_COMPLETED)
                ready.cancel()
                if not self.ready.is_set():
                    raise RuntimeError(f"{self.name} exited early: " + " | ".join(self.tail[-5:]))
                done.cancel()
        except BaseException:
            await self.stop()
            raise
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.tail.append(line)
            if len(self.tail) > 200:
                del self.tail[:100]
            if not self.ready.is_set() and self.marker in line:
                self.ready.set()

    async def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM by PID, then SIGKILL if it lingers; returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._drain is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._drain
        return proc.returncode


def py(*args: str) -> list[str]:
    return [sys.executable, *args]


def rss(pid: int) -> int:
    """Resident set size in bytes (psutil if installed, else /proc)."""
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (0.0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / tick
    except (OSError, IndexError, ValueError):
        return 0.0
