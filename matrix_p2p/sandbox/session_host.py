"""The leases' session processes: spawn them, exchange JSON lines with them, report their deaths.

The I/O shell of ``sessions.SessionTable``: the table decides (keep, spawn,
respawn, ignore a stale death); this module carries it out. A session's
process is spawned by the runner like an execution (same bwrap argv,
rlimits, work dir, uid; its CPU budget is the whole ``Limits.cpu_s``) and
tracked in the lease's slot, so the slot's rebuild after a release or a
reclaim, and the service's stop, kill it with the slot's other processes.

The pipe protocol: the service writes one request as one line of JSON to the
program's stdin and reads one line back from its stdout; that line must be
JSON. Anything else (a line nobody asked for, two lines for one request, a
line over ``Limits.output_bytes``, not JSON, stdout closed) breaks the
protocol: the process is killed and the call fails with ``SessionDied``, the
exit status and the tail of its stderr in the message. A call with no reply
within its timeout kills the process too (``SessionTimeout``). Either way the
next call spawns the program again and its reply says ``restarted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import msgspec
import structlog

from matrix_p2p.sandbox.errors import SessionDied, SessionTimeout, UnknownLease
from matrix_p2p.sandbox.runner import ExecSpec, LongLived, RunAs, Runner
from matrix_p2p.sandbox.sessions import Respawn, SessionSpec, SessionTable

log = structlog.get_logger(__name__)

_STDERR_TAIL = 2048  # bytes of a session's stderr kept for the message when it dies
_REAP_S = 5.0  # how long a killed process may take to be reaped before the report goes out


class _Broken(Exception):
    """The pipe protocol broke (see the module doc); the message says how."""


class SessionPipe(LongLived):
    """One session process: its stdin and stdout as a JSON-lines pipe, its stderr's tail."""

    def __init__(self, limit: int, runner_mode: str = "bwrap") -> None:
        super().__init__()
        self.limit = limit
        self.runner_mode = runner_mode
        self.generation = 0  # set by the host once spawned
        self.broken: str | None = None  # how the process broke the protocol, once it has
        self._out = bytearray()
        self._err = bytearray()
        self._waiter: asyncio.Future[bytes] | None = None

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 2:
            self._err += data
            del self._err[:-_STDERR_TAIL]
            return
        self._out += data
        while self.broken is None:
            end = self._out.find(b"\n")
            if (end if end >= 0 else len(self._out)) > self.limit:
                self.break_protocol(f"wrote a reply longer than {self.limit} bytes")
            if end < 0:
                return
            line = bytes(self._out[:end])
            del self._out[:end + 1]
            if not line.strip():
                continue  # a blank line is not a reply
            if self._waiter is None or self._waiter.done():
                self.break_protocol("wrote a line nobody asked for")
            elif self._out.strip():
                self.break_protocol("wrote more than one line for one request")
            else:
                self._out.clear()
                waiter, self._waiter = self._waiter, None
                waiter.set_result(line)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self._fail(_Broken("closed its stdout"))

    def break_protocol(self, how: str) -> None:
        """It broke the pipe protocol: fail the call waiting on it, and kill it."""
        if self.broken is None:
            self.broken = how
        self._fail(_Broken(how))
        self.kill()

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def exchange(self, line: bytes) -> bytes:
        """Send one request line, wait for the reply line (no timeout here: the caller's)."""
        stdin = self.transport.get_pipe_transport(0) if self.transport is not None else None
        if self.broken is not None or self.returncode is not None or stdin is None \
                or stdin.is_closing():
            raise _Broken(self.broken or "is not running")
        self._waiter = asyncio.get_running_loop().create_future()
        cast(asyncio.WriteTransport, stdin).write(line)
        return await self._waiter

    def why(self, how: str) -> str:
        """How it ended, for a person: what broke, the exit status, the tail of stderr."""
        rc = self.returncode
        if rc is None:
            status = "still running"
        elif rc < 0:
            try:
                status = f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                status = f"killed by signal {-rc}"
        else:
            status = f"exited with status {rc}"
            if rc > 128 and self.runner_mode == "bwrap":
                with contextlib.suppress(ValueError):  # bwrap reports a signal as 128 + its number
                    status += f", {signal.Signals(rc - 128).name} inside the sandbox"
        err = " ".join(self._err.decode("utf-8", "replace").split())[-500:]
        return f"{how} ({status}{'; stderr: ' + err if err else ''})"


@dataclass(frozen=True)
class Answer:
    """A call's reply line (JSON, as the program wrote it) and what happened on the way."""

    reply: msgspec.Raw
    restarted: str | None  # the session had died: why (it was spawned again for this call)
    generation: int
    elapsed_s: float


class SessionHost:
    """Start, call and stop the leases' sessions (see the module doc).

    Error handling: ``NoSession`` when the lease has none; ``SessionDied`` /
    ``SessionTimeout`` as above (the session is then dead and the next call
    respawns it); ``UnknownLease`` when the lease ended during the call.
    """

    def __init__(self, runner: Runner, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.runner = runner
        self.table = SessionTable()
        self.clock = clock
        self.pipes: dict[str, SessionPipe] = {}
        self._open: set[SessionPipe] = set()  # every pipe not yet closed, dropped ones included
        self._locks: dict[str, asyncio.Lock] = {}

    async def start(self, lease_id: str, slot: int, work_dir: str, spec: SessionSpec,
                    run_as: RunAs | None) -> tuple[bool, int]:
        """Make ``spec`` the lease's live session: (False when it already was and is kept,
        the generation of its process)."""
        lock = self._locks.setdefault(lease_id, asyncio.Lock())
        async with lock:
            action = self.table.start(lease_id, spec)
            if action != "keep":
                old = self.pipes.pop(lease_id, None)
                if old is not None:
                    old.kill()
                await self._spawn(lease_id, slot, work_dir, run_as, respawn=False)
            return action != "keep", self.table.rows[lease_id].generation

    async def call(self, lease_id: str, slot: int, work_dir: str, run_as: RunAs | None,
                   line: bytes, timeout_s: float) -> Answer:
        """Send one request line and return the reply line, respawning a dead session first."""
        self.table.call(lease_id)  # NoSession when none was started
        lock = self._locks.setdefault(lease_id, asyncio.Lock())
        started = self.clock()
        pipe: SessionPipe | None = None
        respawn: Respawn | None = None
        held = False
        try:
            async with asyncio.timeout(timeout_s):
                async with lock:
                    held = True
                    respawn = self.table.call(lease_id)
                    if respawn is not None:
                        await self._spawn(lease_id, slot, work_dir, run_as, respawn=True)
                    pipe = self.pipes[lease_id]
                    raw = await pipe.exchange(line)
        except TimeoutError:
            if pipe is None:  # this call never reached the process
                where = "while it was being started" if held else "(an earlier call still holds it)"
                raise SessionTimeout(f"session of lease {lease_id!r}: no answer within {timeout_s:g} s "
                                     f"{where}") from None
            raise await self._died(lease_id, pipe, f"did not answer within {timeout_s:g} s",
                                   SessionTimeout, timed_out=True) from None
        except _Broken as exc:
            assert pipe is not None
            raise await self._died(lease_id, pipe, str(exc), SessionDied) from None
        try:
            msgspec.json.decode(raw, type=msgspec.Raw)  # the program's reply must be JSON
        except msgspec.DecodeError:
            how = "wrote a reply that is not JSON: " + raw[:80].decode("utf-8", "replace")
            raise await self._died(lease_id, pipe, how, SessionDied) from None
        self.table.answered(lease_id)
        return Answer(reply=msgspec.Raw(raw), restarted=respawn.lost if respawn else None,
                      generation=self.table.rows[lease_id].generation,
                      elapsed_s=round(self.clock() - started, 6))

    def stop(self, lease_id: str) -> bool:
        """End the lease's session (kill its process). False when it had none."""
        self._locks.pop(lease_id, None)
        pipe = self.pipes.pop(lease_id, None)
        if pipe is not None:
            pipe.kill()
        return self.table.drop(lease_id) is not None

    def drop(self, lease_id: str) -> None:
        """The lease ended: forget its session. Its process dies with the slot's rebuild
        (``Runner.kill_slot`` kills every process tracked in the slot, this one included)."""
        self._locks.pop(lease_id, None)
        self.pipes.pop(lease_id, None)
        self.table.drop(lease_id)

    def drop_all(self) -> None:
        """The service is stopping: forget every session (the slots' processes are killed next)."""
        for lease_id in list(self.table.rows):
            self.drop(lease_id)

    async def close(self) -> None:
        """The service stops, its slots' processes killed: wait (bounded) for each session's
        pipes to close, then close what is left, before the event loop goes."""
        for pipe in list(self._open):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_REAP_S):
                    await pipe.closed.wait()
            pipe.close()
        self._open.clear()

    async def _spawn(self, lease_id: str, slot: int, work_dir: str, run_as: RunAs | None,
                     *, respawn: bool) -> None:
        spec = self.table.rows[lease_id].spec
        exec_spec = ExecSpec(argv=spec.argv, timeout_s=float(self.runner.limits.cpu_s),
                             cwd=spec.cwd, env=dict(spec.env))
        limit, mode = self.runner.limits.output_bytes, self.runner.mode
        try:
            pipe = await self.runner.spawn(slot, work_dir, exec_spec, run_as,
                                           lambda: SessionPipe(limit, mode))
        except OSError as exc:
            self.table.spawn_failed(lease_id, f"could not be started: {exc}")
            raise SessionDied(f"session of lease {lease_id!r} could not be started: {exc}") from None
        generation = pipe.generation = self.table.spawned(lease_id, respawn=respawn)
        self.pipes[lease_id] = pipe
        self._open = {p for p in self._open if not p.closed.is_set()}
        self._open.add(pipe)
        pipe.when_exited(lambda: self._exited(lease_id, generation, pipe))
        log.info("sandbox.session_started", lease=lease_id, slot=slot, pid=pipe.pid,
                 generation=generation, respawn=respawn)

    def _exited(self, lease_id: str, generation: int, pipe: SessionPipe) -> None:
        """A session process ended on its own (or was killed): the session is dead until a call."""
        if self.table.died(lease_id, generation, pipe.why(pipe.broken or "ended")):
            log.warning("sandbox.session_died", lease=lease_id, generation=generation,
                        why=self.table.rows[lease_id].lost)

    async def _died(self, lease_id: str, pipe: SessionPipe, how: str, error: type[SessionDied],
                    *, timed_out: bool = False) -> Exception:
        """The call failed: mark the session dead, kill the process, wait (bounded) for its
        exit status, and build the error for the caller."""
        self.table.died(lease_id, pipe.generation, how, timed_out=timed_out)  # before its exit callback
        pipe.kill()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_REAP_S):
                await pipe.exited.wait()
        if not self.table.has(lease_id):  # the lease ended under the call: its slot killed it
            return UnknownLease(lease_id)
        why = pipe.why(how)
        row = self.table.rows[lease_id]
        if row.generation == pipe.generation and not row.live:
            row.lost = why  # with the exit status, for the reply of the respawn
        log.warning("sandbox.session_call_failed", lease=lease_id, why=why, timed_out=timed_out)
        return error(f"session of lease {lease_id!r} {why}; the next call starts it again")
