"""The progress display of long runs: done, failed, rate, tokens/s, in flight."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import TextIO

import msgspec


class Snapshot(msgspec.Struct):
    done: int = 0
    failed: int = 0
    total: int | None = None
    inflight: int = 0
    tokens: int = 0  # generated (completion) tokens so far
    submitted: int = 0


def _fmt_eta(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def render(s: Snapshot, elapsed: float, rate: float, tok_rate: float) -> str:
    finished = s.done + s.failed
    total = f"/{s.total}" if s.total is not None else ""
    pct = f" {100 * finished / s.total:5.1f}%" if s.total else ""
    eta = ""
    if s.total and rate > 0 and finished < s.total:
        eta = f" eta {_fmt_eta((s.total - finished) / rate)}"
    return (f"[{_fmt_eta(elapsed):>6}] {finished}{total}{pct} | done {s.done} failed {s.failed}"
            f" | in flight {s.inflight} | {rate:,.1f} tasks/s | {tok_rate:,.0f} tok/s{eta}")


class Progress:
    """Redraws one line in place on a terminal; prints a line every ``every_s`` otherwise."""

    def __init__(self, read: Callable[[], Snapshot], *, stream: TextIO | None = None,
                 every_s: float | None = None) -> None:
        self.read = read
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s if every_s is not None else (0.5 if self.tty else 10.0)
        self.started = time.monotonic()
        self._last = (self.started, 0, 0)

    def line(self) -> str:
        now = time.monotonic()
        s = self.read()
        t0, f0, k0 = self._last
        dt = max(now - t0, 1e-9)
        finished = s.done + s.failed
        rate = (finished - f0) / dt
        tok_rate = (s.tokens - k0) / dt
        self._last = (now, finished, s.tokens)
        return render(s, now - self.started, rate, tok_rate)

    def overall(self) -> str:
        s = self.read()
        elapsed = time.monotonic() - self.started
        finished = s.done + s.failed
        return (f"{finished} tasks ({s.done} done, {s.failed} failed) in {elapsed:.1f}s: "
                f"{finished / max(elapsed, 1e-9):,.1f} tasks/s, "
                f"{s.tokens / max(elapsed, 1e-9):,.0f} generated tok/s")

    def draw(self) -> None:
        text = self.line()
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with asyncio.timeout(self.every_s):
                    await stop.wait()
            except TimeoutError:
                self.draw()
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
