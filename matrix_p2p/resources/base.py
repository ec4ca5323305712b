"""Resources a task holds across hops, and their leases.

A resource kind (a sandbox pool, later a GPU slot or a browser) has one small
interface: acquire for a task, renew, release. A lease (kind, id, where,
expiry) rides in ``Task.leases``, so whichever worker handles the next hop
finds the same resource. Whoever ends the task, on any path (done, failed,
dead-lettered, out of deliveries), releases its leases; the service reclaims a
lease whose TTL ran out, so a worker killed mid-trajectory leaks nothing for
long. Release never depends on a sink being up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import structlog

from matrix_p2p.envelope import Lease, Task
from matrix_p2p.errors import MatrixError

log = structlog.get_logger(__name__)


class ResourceKind(Protocol):
    """One kind of resource, as a client of the service that owns it. ``renew_margin_s``:
    a held lease closer than this to its expiry is renewed when the task next uses it."""

    renew_margin_s: float

    async def acquire(self, task_id: str) -> Lease: ...

    async def renew(self, lease: Lease) -> Lease: ...

    async def release(self, lease: Lease) -> None: ...


class ResourceGone(MatrixError):
    """The service no longer knows the lease (it expired, or the service restarted)."""


class Resources:
    """The resource kinds this process can use, by the name the workflow gives them."""

    def __init__(self, kinds: Mapping[str, ResourceKind] | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.kinds: dict[str, ResourceKind] = dict(kinds or {})
        self.clock = clock

    def held(self, task: Task, name: str) -> Lease | None:
        return next((lease for lease in task.leases if lease.kind == name), None)

    async def lease(self, task: Task, name: str) -> Lease:
        """The task's lease on ``name``: the one it holds, else a new one (kept in the
        envelope, so the next hop on any worker uses the same resource). A held lease
        near its expiry is renewed first (``ResourceGone`` if the service lost it)."""
        found = self.held(task, name)
        kind = self._kind(name)
        if found is not None:
            if found.expires_at is not None and \
                    found.expires_at - self.clock() < kind.renew_margin_s:
                renewed = await self.renew(task, name)
                assert renewed is not None
                return renewed
            return found
        new = await kind.acquire(task.id)
        new.kind = name
        task.leases.append(new)
        return new

    async def renew(self, task: Task, name: str) -> Lease | None:
        found = self.held(task, name)
        if found is None:
            return None
        renewed = await self._kind(name).renew(found)
        renewed.kind = name
        task.leases = [renewed if lease is found else lease for lease in task.leases]
        return renewed

    def forget(self, task: Task, name: str) -> None:
        """Drop a lease the service no longer knows (the task restarts on a fresh one)."""
        task.leases = [lease for lease in task.leases if lease.kind != name]

    async def release_all(self, leases: list[Lease], **context: Any) -> int:
        """Release every lease of a task that ended. Never raises: a lease that cannot
        be released now lapses at its TTL and the service reclaims it."""
        released = 0
        for lease in leases:
            kind = self.kinds.get(lease.kind)
            if kind is None:
                log.warning("resources.unknown_kind", kind=lease.kind, ref=lease.ref, **context)
                continue
            try:
                await kind.release(lease)
            except MatrixError as exc:
                log.warning("resources.release_failed", kind=lease.kind, ref=lease.ref,
                            error=str(exc), **context)
                continue
            released += 1
        return released

    def _kind(self, name: str) -> ResourceKind:
        try:
            return self.kinds[name]
        except KeyError:
            known = ", ".join(sorted(self.kinds)) or "none"
            raise MatrixError(f"resource {name!r} is not available to this worker "
                              f"(available: {known})") from None
