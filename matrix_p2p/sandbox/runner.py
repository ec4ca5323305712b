"""Run one command in a sandbox: spawn, feed stdin, read capped output, enforce a wall-clock timeout.

Every execution starts in its own session (``start_new_session``), so its
process group id is the wrapper's pid. On timeout (or a release while it
runs) the whole group gets SIGKILL; in ``bwrap`` mode that also kills the
sandbox's init, and the kernel then kills every process left in its pid
namespace, including ones that called ``setsid`` to leave the group.

Output: at most ``Limits.output_bytes`` of stdout and, separately, of
stderr are kept; the rest is read and dropped (so the process never blocks
on a full pipe) and the kept text ends with a one-line truncation note.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import msgspec
import structlog

import matrix_p2p.sandbox.isolation as isolation
from matrix_p2p.sandbox.isolation import IsolationMode, Limits

log = structlog.get_logger(__name__)

TRUNCATION_NOTE = "\n[matrix_p2p sandbox: output truncated: {total} bytes written, {limit} kept]\n"
_CHUNK = 64 * 1024
_REAP_TIMEOUT_S = 10.0


class Tracked(Protocol):
    """A process the runner kills with its slot: an execution, or a session's process."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...


class LongLived(asyncio.SubprocessProtocol):
    """The protocol of a long-lived process (a session): its pid, its exit status, and
    callbacks run once when it exits. Subclasses read its pipes (``session_host``)."""

    def __init__(self) -> None:
        self.transport: asyncio.SubprocessTransport | None = None
        self.exited = asyncio.Event()
        self.closed = asyncio.Event()  # exited, and every holder of its pipes gone
        self._on_exit: list[Callable[[], None]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's process transport is not a subclass of asyncio's: no isinstance check
        self.transport = cast(asyncio.SubprocessTransport, transport)

    @property
    def pid(self) -> int:
        return self.transport.get_pid() if self.transport is not None else 0

    @property
    def returncode(self) -> int | None:
        return self.transport.get_returncode() if self.transport is not None else None

    def when_exited(self, callback: Callable[[], None]) -> None:
        if self.exited.is_set():
            callback()
        else:
            self._on_exit.append(callback)

    def process_exited(self) -> None:
        self.exited.set()
        callbacks, self._on_exit = self._on_exit, []
        for callback in callbacks:
            callback()

    def connection_lost(self, exc: Exception | None) -> None:
        # Exited and every pipe closed: only now may the transport close (a reply
        # written just before exiting is still in the pipe until then).
        self.close()
        self.closed.set()

    def close(self) -> None:
        """Close the transport (idempotent; it SIGKILLs the process itself if still running)."""
        if self.transport is not None:
            self.transport.close()

    def kill(self) -> None:
        """SIGKILL its process group, unless it was already reaped (the pgid could be reused)."""
        if self.transport is not None and self.returncode is None:
            kill_group(self.pid)


P = TypeVar("P", bound=LongLived)


class ExecResult(msgspec.Struct, kw_only=True):
    """What one execution produced. ``returncode`` is negative for a signal (``-9`` after a kill)."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    elapsed_s: float
    stdout_truncated: bool = False
    stderr_truncated: bool = False


@dataclass(frozen=True)
class ExecSpec:
    """One command: ``argv`` run with ``cwd`` (inside the sandbox), ``env`` on top of a clean one."""

    argv: Sequence[str]
    timeout_s: float
    stdin: bytes = b""
    cwd: str | None = None
    env: Mapping[str, str] | None = None


@dataclass(frozen=True)
class RunAs:
    """A host uid/gid to drop to before exec (the server runs as root)."""

    uid: int
    gid: int


def _drop_privileges(run_as: RunAs | None) -> dict[str, Any]:
    """The spawn arguments that drop to ``run_as``. uvloop's subprocess_exec has no
    ``user``/``group``/``extra_groups`` (``run`` uses uvloop), so there it is a preexec_fn."""
    if run_as is None:
        return {}
    if type(asyncio.get_running_loop()).__module__.startswith("uvloop"):
        def drop() -> None:
            os.setgroups([])
            os.setgid(run_as.gid)
            os.setuid(run_as.uid)
        return {"preexec_fn": drop}
    return {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}


async def _read_capped(stream: asyncio.StreamReader | None, limit: int) -> tuple[bytes, int]:
    """Read to EOF keeping the first ``limit`` bytes. Returns (kept, total)."""
    if stream is None:
        return b"", 0
    kept = bytearray()
    total = 0
    while chunk := await stream.read(_CHUNK):
        total += len(chunk)
        room = limit - len(kept)
        if room > 0:
            kept += chunk[:room]
    return bytes(kept), total


def _text(data: bytes, total: int, limit: int) -> tuple[str, bool]:
    text = data.decode("utf-8", errors="replace")
    if total > limit:
        return text + TRUNCATION_NOTE.format(total=total, limit=limit), True
    return text, False


async def _settle(io: asyncio.Future[Any], proc: asyncio.subprocess.Process) -> None:
    """After a kill: let the readers reach EOF and reap the wrapper, both bounded.

    A process that escaped the group (``--isolation none`` only) may hold the
    pipes open; its output is then dropped rather than waited for.
    """
    try:
        async with asyncio.timeout(_REAP_TIMEOUT_S):
            await asyncio.shield(io)
    except TimeoutError:
        io.cancel()
    except Exception:  # a reader failed; the result says "no output"
        log.warning("sandbox.output_read_failed", pid=proc.pid, exc_info=True)
    await asyncio.gather(io, return_exceptions=True)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_REAP_TIMEOUT_S):
            await proc.wait()


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid``; a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class Runner:
    """Spawns sandboxed processes and keeps track of them per slot, so a
    released or reclaimed slot can have its running processes killed.

    Error handling: ``run`` raises ``OSError`` only when the wrapper cannot
    be spawned at all; a command that fails, crashes or is killed comes
    back as an ``ExecResult``. Cancelling ``run`` kills the process group.
    """

    def __init__(
        self,
        mode: IsolationMode,
        limits: Limits,
        *,
        bwrap: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mode = mode
        self.limits = limits.validate()
        self.bwrap = bwrap if bwrap is not None else (isolation.find_bwrap() if mode == "bwrap" else "")
        self.prlimit = shutil.which("prlimit")
        self.clock = clock
        self._system = isolation.system_binds() if mode == "bwrap" else []
        self._running: dict[int, set[Tracked]] = {}
        self._idle: dict[int, asyncio.Event] = {}

    def command(self, work_dir: str, spec: ExecSpec, run_as: RunAs | None) -> tuple[list[str], str | None]:
        """The full argv (rlimits, then bwrap, then the command) and the host cwd for spawning."""
        cpu_s = math.ceil(spec.timeout_s) + 1
        prefix = isolation.rlimit_prefix(self.limits, cpu_s, self.prlimit)
        if self.mode == "none":
            return [*prefix, *spec.argv], isolation.plain_cwd(work_dir, spec.cwd)
        python = isolation.python_binds(needs_world_access=run_as is not None)
        env = isolation.sandbox_env(spec.env, isolation.WORK_DIR, [f"{p}/bin" for p in python])
        wrapped = isolation.bwrap_argv(
            self.bwrap, work_dir, spec.argv, limits=self.limits, env=env, cwd=spec.cwd,
            extra_ro=python, system=self._system,
        )
        return [*prefix, *wrapped], None

    def _spawn_args(self, work_dir: str, spec: ExecSpec,
                    run_as: RunAs | None) -> tuple[list[str], dict[str, Any]]:
        """The argv and the keyword arguments of the spawn (pipes, cwd, env, session, uid)."""
        argv, host_cwd = self.command(work_dir, spec, run_as)
        env = isolation.sandbox_env(spec.env, work_dir) if self.mode == "none" \
            else {"PATH": os.environ.get("PATH", isolation.DEFAULT_PATH)}
        return argv, {
            "stdin": asyncio.subprocess.PIPE, "stdout": asyncio.subprocess.PIPE,
            "stderr": asyncio.subprocess.PIPE, "cwd": host_cwd, "env": env,
            "start_new_session": True,  # its pgid is its pid: one killpg ends it all
            **_drop_privileges(run_as),
        }

    async def run(self, key: int, work_dir: str, spec: ExecSpec, run_as: RunAs | None = None) -> ExecResult:
        """Run ``spec`` in the sandbox whose work dir is ``work_dir``; ``key`` is the slot."""
        argv, kwargs = self._spawn_args(work_dir, spec, run_as)
        started = self.clock()
        proc = await asyncio.create_subprocess_exec(*argv, **kwargs)
        self.track(key, proc)
        timed_out = False
        limit = self.limits.output_bytes
        io = asyncio.gather(
            _read_capped(proc.stdout, limit), _read_capped(proc.stderr, limit), self._feed(proc, spec.stdin)
        )
        try:
            async with asyncio.timeout(spec.timeout_s):
                await asyncio.shield(io)
                await proc.wait()
        except TimeoutError:
            timed_out = True
        finally:
            # Timed out or cancelled: kill the group while its leader is not yet
            # reaped (so the pgid cannot have been reused). In bwrap mode this
            # ends the whole pid namespace; on a normal exit bwrap's init has
            # already taken everything in it down.
            if proc.returncode is None:
                kill_group(proc.pid)
            await _settle(io, proc)
            self.untrack(key, proc)
        if io.done() and not io.cancelled() and io.exception() is None:
            (out, out_total), (err, err_total), _ = io.result()
        else:
            out, out_total, err, err_total = b"", 0, b"", 0
        stdout, out_cut = _text(out, out_total, limit)
        stderr, err_cut = _text(err, err_total, limit)
        rc = proc.returncode if proc.returncode is not None else -signal.SIGKILL
        return ExecResult(
            returncode=rc, stdout=stdout, stderr=stderr, timed_out=timed_out,
            elapsed_s=round(self.clock() - started, 4),
            stdout_truncated=out_cut, stderr_truncated=err_cut,
        )

    @staticmethod
    async def _feed(proc: asyncio.subprocess.Process, data: bytes) -> None:
        stdin = proc.stdin
        if stdin is None:
            return
        # A command that exits without reading its input closes the pipe first.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if data:
                stdin.write(data)
                await stdin.drain()
        stdin.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await stdin.wait_closed()

    async def spawn(self, key: int, work_dir: str, spec: ExecSpec, run_as: RunAs | None,
                    factory: Callable[[], P]) -> P:
        """Start a long-lived process (a session) confined like ``run``'s, with ``spec.timeout_s``
        as its CPU budget, talking to it through ``factory()``'s protocol. It is tracked in
        slot ``key`` until it exits, so ``kill_slot`` (release, reclaim, stop) kills it.
        Raises ``OSError`` when the wrapper cannot be spawned."""
        argv, kwargs = self._spawn_args(work_dir, spec, run_as)
        _, proto = await asyncio.get_running_loop().subprocess_exec(factory, *argv, **kwargs)
        if proto.returncode is None:  # not gone already (its exit callback may have run)
            self.track(key, proto)
            proto.when_exited(lambda: self.untrack(key, proto))
        return proto

    # -- per-slot bookkeeping -------------------------------------------------
    def track(self, key: int, proc: Tracked) -> None:
        self._running.setdefault(key, set()).add(proc)
        self._idle.setdefault(key, asyncio.Event()).clear()

    def untrack(self, key: int, proc: Tracked) -> None:
        procs = self._running.get(key)
        if procs is not None:
            procs.discard(proc)
            if not procs:
                del self._running[key]
                self._idle[key].set()

    def running(self, key: int) -> int:
        return len(self._running.get(key, ()))

    async def kill_slot(self, key: int, timeout_s: float = _REAP_TIMEOUT_S) -> None:
        """SIGKILL everything running in slot ``key`` and wait (bounded) until each ``run`` returned."""
        for proc in list(self._running.get(key, ())):
            if proc.returncode is None:  # not reaped yet: its pgid cannot have been reused
                kill_group(proc.pid)
        idle = self._idle.get(key)
        if idle is not None and key in self._running:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await idle.wait()

    async def probe(self, work_dir: str, run_as: RunAs | None) -> str | None:
        """Run ``true`` in a sandbox: None if it worked, else bwrap's first error line."""
        try:
            result = await self.run(-1, work_dir, ExecSpec(argv=["true"], timeout_s=15.0), run_as)
        except OSError as exc:
            return f"cannot start the sandbox wrapper: {exc}"
        if result.returncode == 0:
            return None
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        detail = lines[0] if lines else f"exit status {result.returncode}"
        return "timed out" if result.timed_out else detail
