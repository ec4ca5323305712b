"""Sandboxes as a resource kind: leases from one or more sandbox servers.

``SandboxPool`` is the ``ResourceKind`` for one ``resources.sandbox.<name>`` of
a workflow: it spreads acquires over its servers (``--sandbox-url``,
repeatable, like ``--llm-url``) by fewest leases held by this process, ties
broken round robin, and remembers each lease's server in ``Lease.where``, so
the next hop, on any worker, executes on the same sandbox.

Agents use ``sandbox(ctx, name)``: the role must name the resource in its
``resources`` list; the lease is acquired on first use, renewed when close to
its expiry, and released by the worker when the task ends (``resources.base``).

A role with state to keep across calls (a tool environment) starts a
*session* on its lease (``Sandbox.start_session``: one long-lived program
in the sandbox) and sends it requests (``Sandbox.call``), instead of running
a process per call (``Sandbox.run``).

Error handling: a pool that stays exhausted, or a server that is down, is
``SandboxUnavailable``, which ``Sandbox.run`` / ``start_session`` / ``call``
turn into ``RetryLater`` (the hop runs again later, the task keeps its
place). A session that died or hung reaches the agent as ``SessionDied`` /
``SessionTimeout`` (the next call starts it again), one never started as
``NoSession``. A lease the server no longer
knows (it restarted, or the TTL ran out) is ``ResourceGone``: the sandbox's
files are lost, so the agent calls ``restart_trajectory`` (which fails the
task once ``max_restarts`` is used up) and starts over on a fresh sandbox.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import structlog

from matrix_p2p.agent import Context
from matrix_p2p.envelope import Lease, Task
from matrix_p2p.errors import ConfigError, FailTask, MatrixError, RetryLater
from matrix_p2p.resources.base import ResourceGone, Resources
from matrix_p2p.sandbox.client import Execution, SandboxClient, SessionReply, SessionStarted
from matrix_p2p.sandbox.errors import LeaseGone, SandboxUnavailable
from matrix_p2p.workflow.spec import SandboxResource, WorkflowSpec

log = structlog.get_logger(__name__)

RESTARTS_KEY = "sandbox_restarts"  # task.state: trajectories restarted on a fresh sandbox
PER_SERVER_TRY_S = 2.0  # with several servers, how long one acquire waits before trying the next


class SandboxPool:
    """One workflow sandbox resource over its servers. ``async with`` opens the clients."""

    def __init__(self, name: str, urls: Sequence[str], res: SandboxResource) -> None:
        if not urls:
            raise ConfigError(f"resources.sandbox.{name}: no sandbox server "
                              "(give --sandbox-url, or urls in the workflow file)")
        self.name = name
        self.res = res
        self.urls = [u.rstrip("/") for u in urls]
        self.clients = {u: SandboxClient(u, acquire_timeout_s=res.acquire_timeout_s)
                        for u in self.urls}
        self.held: dict[str, int] = dict.fromkeys(self.urls, 0)  # leases this process holds
        self.renew_margin_s = res.ttl_s / 2
        self._turn = itertools.count()

    async def __aenter__(self) -> SandboxPool:
        for c in self.clients.values():
            await c.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for c in self.clients.values():
            await c.close()

    def order(self) -> list[str]:
        """Servers to try, fewest leases held here first; ties rotate round robin."""
        start = next(self._turn) % len(self.urls)
        rotated = self.urls[start:] + self.urls[:start]
        return sorted(rotated, key=lambda u: self.held[u])

    async def acquire(self, task_id: str) -> Lease:
        deadline = time.monotonic() + self.res.acquire_timeout_s
        last: SandboxUnavailable | None = None
        while True:
            for url in self.order():
                remaining = deadline - time.monotonic()
                if remaining <= 0 and last is not None:
                    raise last
                wait = remaining if len(self.urls) == 1 else min(PER_SERVER_TRY_S, remaining)
                try:
                    got = await self.clients[url].acquire(task_id, ttl_s=self.res.ttl_s,
                                                          timeout_s=max(0.0, wait))
                except SandboxUnavailable as exc:
                    last = exc
                    continue
                self.held[url] += 1
                return Lease(kind=self.name, ref=got.id, expires_at=got.expires_at, where=url)

    async def renew(self, lease: Lease) -> Lease:
        try:
            got = await (await self._client(lease)).renew(lease.ref, self.res.ttl_s)
        except LeaseGone as exc:
            raise ResourceGone(f"sandbox {lease.ref} on {lease.where}: {exc}") from None
        return Lease(kind=lease.kind, ref=got.id, expires_at=got.expires_at, where=lease.where)

    async def release(self, lease: Lease) -> None:
        client = await self._client(lease)
        if lease.where in self.held:
            self.held[lease.where] = max(0, self.held[lease.where] - 1)
        await client.release(lease.ref)  # False: already gone (expired or restarted): fine

    async def execute(self, lease: Lease, argv: Sequence[str], *,
                      files: Mapping[str, str] | None = None, stdin: str | None = None,
                      timeout_s: float | None = None) -> Execution:
        try:
            return await (await self._client(lease)).execute(
                lease.ref, argv, files=files, stdin=stdin, timeout_s=timeout_s or self.res.timeout_s)
        except LeaseGone as exc:
            raise ResourceGone(f"sandbox {lease.ref} on {lease.where}: {exc}") from None

    async def start_session(self, lease: Lease, argv: Sequence[str], *,
                            files: Mapping[str, str] | None = None,
                            env: Mapping[str, str] | None = None) -> SessionStarted:
        try:
            return await (await self._client(lease)).start_session(lease.ref, argv, files=files, env=env)
        except LeaseGone as exc:
            raise ResourceGone(f"sandbox {lease.ref} on {lease.where}: {exc}") from None

    async def call(self, lease: Lease, request: Any, *, timeout_s: float | None = None) -> SessionReply:
        try:
            return await (await self._client(lease)).call(lease.ref, request,
                                                          timeout_s=timeout_s or self.res.timeout_s)
        except LeaseGone as exc:
            raise ResourceGone(f"sandbox {lease.ref} on {lease.where}: {exc}") from None

    async def _client(self, lease: Lease) -> SandboxClient:
        client = self.clients.get(lease.where)
        if client is None:
            # a lease from a server this worker was not given (another worker's
            # --sandbox-url): talk to it anyway, or the task could never finish
            client = self.clients[lease.where] = SandboxClient(lease.where)
            await client.start()
        return client


@contextlib.asynccontextmanager
async def open_sandboxes(spec: WorkflowSpec, urls: Sequence[str] = ()) -> AsyncIterator[Resources]:
    """Every sandbox resource the workflow declares, as ``Resources`` (empty when none).

    Every worker opens all of them, whatever roles it serves: whoever ends a
    task releases its leases. ``urls`` (``--sandbox-url``) replace the file's.
    """
    async with contextlib.AsyncExitStack() as stack:
        kinds = {}
        for name, res in spec.resources.sandbox.items():
            pool = SandboxPool(name, list(urls) or res.urls, res)
            kinds[name] = await stack.enter_async_context(pool)
        yield Resources(kinds)


class Sandbox:
    """A role's handle on its task's sandbox for one hop (see ``sandbox``)."""

    def __init__(self, ctx: Context, pool: SandboxPool) -> None:
        self.ctx = ctx
        self.pool = pool

    async def lease(self) -> Lease:
        """The task's lease: held, renewed if near expiry, or acquired now."""
        try:
            return await self.ctx.resources.lease(self.ctx.task, self.pool.name)
        except SandboxUnavailable as exc:
            raise RetryLater(f"no sandbox: {exc}", after_s=exc.retry_after_s or 2.0) from None

    async def run(self, argv: Sequence[str], *, files: Mapping[str, str] | None = None,
                  stdin: str | None = None, timeout_s: float | None = None) -> tuple[Execution, Lease]:
        """Execute in the task's sandbox. ``ResourceGone``: see ``restart_trajectory``."""
        lease = await self.lease()
        try:
            result = await self.pool.execute(lease, argv, files=files, stdin=stdin,
                                              timeout_s=timeout_s)
        except SandboxUnavailable as exc:
            raise RetryLater(f"sandbox server unavailable: {exc}",
                             after_s=exc.retry_after_s or 2.0) from None
        return result, lease

    async def start_session(self, argv: Sequence[str], *, files: Mapping[str, str] | None = None,
                            env: Mapping[str, str] | None = None) -> tuple[SessionStarted, Lease]:
        """Start ``argv`` as the session of the task's sandbox (kept if it already runs)."""
        lease = await self.lease()
        try:
            started = await self.pool.start_session(lease, argv, files=files, env=env)
        except SandboxUnavailable as exc:
            raise RetryLater(f"sandbox server unavailable: {exc}",
                             after_s=exc.retry_after_s or 2.0) from None
        return started, lease

    async def call(self, request: Any, *, timeout_s: float | None = None) -> tuple[SessionReply, Lease]:
        """One request to the session of the task's sandbox. ``ResourceGone``: see
        ``restart_trajectory``; ``SessionDied`` / ``SessionTimeout`` / ``NoSession``: see above."""
        lease = await self.lease()
        try:
            reply = await self.pool.call(lease, request, timeout_s=timeout_s)
        except SandboxUnavailable as exc:
            raise RetryLater(f"sandbox server unavailable: {exc}",
                             after_s=exc.retry_after_s or 2.0) from None
        return reply, lease


def sandbox(ctx: Context, name: str | None = None) -> Sandbox:
    """The sandbox resource ``name`` (default: the role's only one) for this hop."""
    named = ctx.role.resources
    if name is None:
        if len(named) != 1:
            raise MatrixError(f"role {ctx.role.name!r} names {len(named)} resources; pass one")
        name = named[0]
    if name not in named:
        raise MatrixError(f"role {ctx.role.name!r} does not name resource {name!r} "
                          f"in roles.{ctx.role.name}.resources")
    pool = ctx.resources.kinds.get(name)
    if not isinstance(pool, SandboxPool):
        raise MatrixError(f"resource {name!r} is not a sandbox pool in this worker")
    return Sandbox(ctx, pool)


def restart_trajectory(task: Task, ctx: Context, name: str, why: str) -> int:
    """The task's sandbox is gone: drop the lease and count a restart; the caller resets
    its trajectory. Raises ``FailTask`` with the reason once the limit is used up.
    Returns the restart count (also in ``task.state['sandbox_restarts']``)."""
    res = ctx.spec.resources.sandbox[name]
    count = int(task.state.get(RESTARTS_KEY, 0)) + 1
    task.state[RESTARTS_KEY] = count
    ctx.resources.forget(task, name)
    if count > res.max_restarts:
        raise FailTask(f"sandbox lost {count} times (resources.sandbox.{name}.max_restarts="
                       f"{res.max_restarts}): {why}")
    ctx.log.warning("sandbox.trajectory_restarted", task=task.id, restarts=count, reason=why)
    return count
