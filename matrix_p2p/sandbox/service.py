"""The sandbox service: carries out the pool's decisions (directories, health checks,
executions, reclaim) and owns the background work. No HTTP here; see ``server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

import matrix_p2p.sandbox.isolation as isolation
import matrix_p2p.sandbox.workdir as workdir
from matrix_p2p.errors import ConfigError
from matrix_p2p.sandbox.errors import SandboxUnavailable
from matrix_p2p.sandbox.isolation import IsolationMode, Limits
from matrix_p2p.sandbox.pool import Lease, Pool, Refusal
from matrix_p2p.sandbox.runner import ExecResult, ExecSpec, RunAs, Runner
from matrix_p2p.sandbox.session_host import Answer, SessionHost
from matrix_p2p.sandbox.sessions import SessionSpec

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class SandboxConfig:
    """Everything the service needs. ``uid_base``: when the server runs as root,
    slot ``i`` runs as host uid/gid ``uid_base + i`` (its own RLIMIT_NPROC
    budget, no access to other slots' files); ignored otherwise."""

    pool_size: int = 4
    isolation: IsolationMode = "bwrap"
    limits: Limits = field(default_factory=Limits)
    ttl_s: float = 300.0
    max_ttl_s: float = 3600.0
    default_timeout_s: float = 30.0
    max_timeout_s: float = 600.0
    reap_interval_s: float = 5.0
    retry_after_s: float = 1.0
    brake_after: int = 5
    brake_s: float = 30.0
    work_root: str | None = None  # parent of the slots' directories (default: the temp dir)
    uid_base: int = 1_500_000
    bwrap: str | None = None

    def validate(self) -> SandboxConfig:
        if self.pool_size < 1:
            raise ConfigError("sandbox: --pool must be >= 1")
        if self.isolation not in ("bwrap", "none"):
            raise ConfigError(f"sandbox: --isolation must be bwrap or none, not {self.isolation!r}")
        if not 0 < self.default_timeout_s <= self.max_timeout_s:
            raise ConfigError("sandbox: the default timeout must be > 0 and <= the max timeout")
        self.limits.validate()
        return self


@dataclass
class ExecCounters:
    executions: int = 0
    timeouts: int = 0
    nonzero: int = 0
    seconds: float = 0.0


class SandboxService:
    """A warm pool of sandboxes and their leases.

    Use as ``async with SandboxService(cfg) as svc`` or ``start()``/``stop()``.
    ``start`` probes the isolation first (``ConfigError`` with one line if
    bwrap cannot create its namespaces here), then builds and checks every
    slot.

    Error handling: the maintenance loop (reaping expired leases, rechecking
    unhealthy slots) logs and carries on after a failed wipe or check: the
    slot stays unhealthy and is retried on a backoff; only cancellation
    ends it. ``acquire`` raises ``SandboxUnavailable`` (pool exhausted or
    braked, with a retry-after); lease calls raise ``UnknownLease``.
    """

    def __init__(
        self,
        config: SandboxConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config.validate()
        self.clock = clock
        self.wall_clock = wall_clock
        self.pool = Pool(
            config.pool_size, clock, ttl_s=config.ttl_s, max_ttl_s=config.max_ttl_s,
            retry_after_s=config.retry_after_s, brake_after=config.brake_after, brake_s=config.brake_s,
        )
        self.runner = Runner(config.isolation, config.limits, bwrap=config.bwrap)
        self.sessions = SessionHost(self.runner, clock=clock)
        self.exec_counters = ExecCounters()
        self.root = ""
        self._as_root = os.geteuid() == 0 and config.isolation == "bwrap"
        self._changed = asyncio.Event()  # a slot came free: wake waiting acquires
        self._wake = asyncio.Event()  # wake the maintenance loop early
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None

    async def __aenter__(self) -> SandboxService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        self.root = workdir.make_root(self.config.work_root)
        try:
            if self._as_root and not isolation.world_traversable(self.root, readable=False):
                raise ConfigError(
                    f"sandbox: the sandbox uids cannot reach {self.root} (a parent directory is not "
                    "searchable by others); pick another --work-root"
                )
            problem = await self._probe()
            if problem is not None:
                raise ConfigError(
                    f"sandbox: bwrap cannot create its namespaces or sandbox on this host ({problem}); "
                    "pass --isolation none to run commands without isolation (unsafe)"
                )
            if self.config.isolation == "none":
                log.warning("sandbox.isolation_disabled",
                            detail="commands run unconfined as the server's user")
            self._main = asyncio.create_task(self._run(), name="sandbox-service")
            ready = asyncio.ensure_future(self._ready.wait())
            await asyncio.wait([ready, self._main], return_when=asyncio.FIRST_COMPLETED)
            if not ready.done():
                ready.cancel()
                await self._main  # it failed: raise its error
        except BaseException:
            await self.stop()
            raise
        log.info("sandbox.started", pool=self.config.pool_size, isolation=self.config.isolation,
                 root=self.root, counts=self.pool.counts())

    async def stop(self) -> None:
        """Kill every running execution and session, stop the background work, delete every directory."""
        self._stop.set()
        self._wake.set()
        self._changed.set()
        if self._main is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
            self._main = None
        self.sessions.drop_all()
        for slot in self.pool.slots:
            await self.runner.kill_slot(slot.index)
        await self.sessions.close()
        if self.root:
            await asyncio.to_thread(workdir.wipe, self.root)
            self.root = ""

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            await asyncio.gather(*(self._rebuild(i, check=True) for i in range(self.pool.size)))
            self._ready.set()
            tg.create_task(self._maintain(), name="sandbox-maintenance")
            await self._stop.wait()
        self._tg = None

    async def _probe(self) -> str | None:
        probe_dir = os.path.join(self.root, "probe")
        owner = self._owner(0)
        await asyncio.to_thread(workdir.prepare, probe_dir, owner)
        try:
            return await self.runner.probe(probe_dir, self._run_as(0))
        finally:
            await asyncio.to_thread(workdir.wipe, probe_dir)

    # -- slots ----------------------------------------------------------------
    def _run_as(self, index: int) -> RunAs | None:
        if not self._as_root:
            return None
        uid = self.config.uid_base + index
        return RunAs(uid, uid)

    def _owner(self, index: int) -> workdir.Owner:
        run_as = self._run_as(index)
        return workdir.Owner(run_as.uid, run_as.gid) if run_as else workdir.Owner()

    def work_dir(self, index: int) -> str:
        return workdir.slot_dir(self.root, index)

    async def _check(self, index: int) -> bool:
        result = await self.runner.run(
            index, self.work_dir(index), ExecSpec(argv=["/bin/sh", "-c", "test -w ."], timeout_s=15.0),
            self._run_as(index),
        )
        if result.returncode != 0:
            log.warning("sandbox.health_check_failed", slot=index, returncode=result.returncode,
                        timed_out=result.timed_out, stderr=result.stderr[-500:])
        return result.returncode == 0

    async def _rebuild(self, index: int, *, check: bool) -> None:
        """Wipe and recreate a cleaning slot's directory (and check it), then free it."""
        ok = True
        try:
            await self.runner.kill_slot(index)
            await asyncio.to_thread(workdir.prepare, self.work_dir(index), self._owner(index))
            if check:
                ok = await self._check(index)
        except OSError as exc:
            log.warning("sandbox.rebuild_failed", slot=index, error=str(exc))
            ok = False
        self.pool.cleaned(index, ok)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._wake.set()

    def _recycle(self, leases: list[Lease], why: str) -> None:
        for lease in leases:
            self.sessions.drop(lease.id)  # its process dies in the rebuild's kill_slot
            log.info("sandbox.lease_ended", lease=lease.id, slot=lease.slot, task_id=lease.task_id, why=why)
            if self._tg is not None:
                self._tg.create_task(self._rebuild(lease.slot, check=False))

    async def _maintain(self) -> None:
        while not self._stop.is_set():
            self.reap()
            for index in self.pool.due_rechecks():
                assert self._tg is not None
                self._tg.create_task(self._rebuild(index, check=True))
            due = self.pool.next_deadline()
            wait = self.config.reap_interval_s
            if due is not None:
                wait = min(wait, max(0.05, due - self.clock()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def reap(self) -> int:
        """Reclaim expired leases now (the loop does this on its own); returns how many."""
        expired = self.pool.reap()
        self._recycle(expired, "expired")
        return len(expired)

    # -- the verbs ------------------------------------------------------------
    async def acquire(self, task_id: str = "", ttl_s: float | None = None, wait_s: float = 0.0) -> Lease:
        """A health-checked sandbox for ``task_id``, waiting up to ``wait_s`` for one to come free."""
        deadline = self.clock() + wait_s
        while True:
            got = self.pool.reserve()
            if isinstance(got, int):
                if await self._check(got):
                    lease = self.pool.grant(got, task_id, ttl_s)
                    log.info("sandbox.acquired", lease=lease.id, slot=got, task_id=task_id)
                    return lease
                self.pool.failed(got)
                self._wake.set()
                continue
            remaining = deadline - self.clock()
            if remaining <= 0 or self._stop.is_set():
                raise self._unavailable(got)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, got.retry_after_s)):
                    await self._changed.wait()

    def _unavailable(self, refusal: Refusal) -> SandboxUnavailable:
        if refusal.reason == "braked":
            msg = f"sandbox pool braked: {self.pool.brake_after} health checks failed in a row"
        else:
            msg = f"sandbox pool exhausted: all {self.pool.size} sandboxes are leased or being cleaned"
        return SandboxUnavailable(msg, 503, refusal.retry_after_s)

    def renew(self, lease_id: str, ttl_s: float | None = None) -> Lease:
        return self.pool.renew(lease_id, ttl_s)

    def release(self, lease_id: str) -> Lease:
        """End a lease: its processes are killed and its directory wiped (in the background)."""
        lease = self.pool.release(lease_id)
        self._recycle([lease], "released")
        return lease

    def release_all(self) -> list[Lease]:
        leases = self.pool.release_all()
        self._recycle(leases, "released")
        return leases

    async def execute(
        self, lease_id: str, spec: ExecSpec, files: Mapping[tuple[str, ...], bytes] | None = None
    ) -> ExecResult:
        """Write ``files`` into the lease's work dir, then run ``spec`` there."""
        lease = self.pool.begin_exec(lease_id)
        try:
            if files:
                await asyncio.to_thread(workdir.write_files, self.work_dir(lease.slot), files,
                                        self._owner(lease.slot))
            result = await self.runner.run(lease.slot, self.work_dir(lease.slot), spec,
                                           self._run_as(lease.slot))
        finally:
            self.pool.end_exec(lease_id)
        c = self.exec_counters
        c.executions += 1
        c.timeouts += result.timed_out
        c.nonzero += result.returncode != 0
        c.seconds += result.elapsed_s
        return result

    async def start_session(self, lease_id: str, spec: SessionSpec,
                            files: Mapping[tuple[str, ...], bytes] | None = None) -> tuple[bool, int]:
        """Write ``files``, then make ``spec`` the lease's session (see ``session_host``):
        (False when that very session was already running: kept, files still written;
        the generation of its process)."""
        lease = self.pool.begin_exec(lease_id)
        try:
            if files:
                await asyncio.to_thread(workdir.write_files, self.work_dir(lease.slot), files,
                                        self._owner(lease.slot))
            return await self.sessions.start(lease_id, lease.slot, self.work_dir(lease.slot), spec,
                                             self._run_as(lease.slot))
        finally:
            self.pool.end_exec(lease_id)

    async def call_session(self, lease_id: str, line: bytes, timeout_s: float) -> Answer:
        """One request line to the lease's session, its reply line back; a call in flight
        keeps the lease from being reclaimed, like an execution."""
        lease = self.pool.begin_exec(lease_id)
        try:
            return await self.sessions.call(lease_id, lease.slot, self.work_dir(lease.slot),
                                            self._run_as(lease.slot), line, timeout_s)
        finally:
            self.pool.end_exec(lease_id)

    def stop_session(self, lease_id: str) -> bool:
        """Kill the lease's session; False when it had none."""
        self.pool.get(lease_id)
        return self.sessions.stop(lease_id)

    def wall_expiry(self, lease: Lease) -> float:
        """A lease's expiry as a Unix time, for clients on other hosts."""
        return round(self.wall_clock() + (lease.expires_at - self.clock()), 3)

    def status(self) -> dict[str, object]:
        counts = self.pool.counts()
        pc, ec = self.pool.counters, self.exec_counters
        sc = self.sessions.table.counters
        return {
            "pool_size": self.pool.size, "leased": counts["leased"], "free": counts["free"],
            "unhealthy": counts["unhealthy"], "cleaning": counts["cleaning"] + counts["checking"],
            "braked": self.pool.braked(), "isolation": self.config.isolation,
            "executions": ec.executions, "timeouts": ec.timeouts, "nonzero_exits": ec.nonzero,
            "exec_seconds": round(ec.seconds, 3),
            "granted": pc.granted, "refused": pc.refused, "released": pc.released,
            "reclaimed": pc.reclaimed, "health_failed": pc.health_failed,
            "sessions": self.sessions.table.live(), "session_calls": sc.calls,
            "session_starts": sc.started, "session_restarts": sc.restarted,
            "session_deaths": sc.died, "session_timeouts": sc.timeouts,
            "leases": [
                {"lease": ls.id, "task_id": ls.task_id, "expires_at": self.wall_expiry(ls), "busy": ls.busy}
                for ls in self.pool.leases.values()
            ],
        }
