"""The sandbox pool and its leases as a pure state machine. The clock is injected.

Slot states::

    cleaning --cleaned(ok)--> free --reserve--> checking --grant--> leased
       ^   \\--cleaned(bad)--> unhealthy            \\--failed--> unhealthy
       |                          |                                  |
       +---- release / reap ------+---- due_rechecks (backoff) ------+

A slot is health-checked right before it is handed out (``reserve`` then
``grant`` or ``failed``), and rebuilt and rechecked on a backoff while
unhealthy. The *brake*: after ``brake_after`` health failures in a row
across the pool (no success in between), ``reserve`` refuses everyone for
``brake_s`` instead of handing out sandboxes that fail every task; after
that, one success releases it.

A lease is renewed explicitly (``renew``) and implicitly by use: an
execution in flight keeps its lease from being reaped, and its end pushes
the expiry to at least ``now + ttl``. The service carries out what these
methods decide (wipe a directory, run a check, wake a waiter).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from matrix_p2p.backoff import Backoff
from matrix_p2p.sandbox.errors import UnknownLease

SlotState = Literal["free", "checking", "leased", "cleaning", "unhealthy"]
RefusalReason = Literal["exhausted", "braked"]


def _new_lease_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Lease:
    id: str
    slot: int
    task_id: str
    ttl_s: float
    expires_at: float  # on the pool's clock
    busy: int = 0  # executions in flight


@dataclass
class Slot:
    index: int
    state: SlotState = "cleaning"
    lease: Lease | None = None
    failures: int = 0  # consecutive health failures of this slot
    next_check_at: float = 0.0


@dataclass(frozen=True)
class Refusal:
    reason: RefusalReason
    retry_after_s: float


@dataclass
class PoolCounters:
    granted: int = 0
    refused: int = 0
    released: int = 0
    reclaimed: int = 0
    health_ok: int = 0
    health_failed: int = 0
    brakes: int = 0


@dataclass
class Pool:
    """``size`` slots; leases last ``ttl_s`` unless asked otherwise (capped at ``max_ttl_s``)."""

    size: int
    clock: Callable[[], float] = time.monotonic
    ttl_s: float = 300.0
    max_ttl_s: float = 3600.0
    retry_after_s: float = 1.0
    brake_after: int = 5
    brake_s: float = 30.0
    recheck: Backoff = field(default_factory=lambda: Backoff(1.0, 60.0))
    new_id: Callable[[], str] = field(default_factory=lambda: _new_lease_id)
    slots: list[Slot] = field(init=False)
    leases: dict[str, Lease] = field(init=False, default_factory=dict)
    counters: PoolCounters = field(init=False, default_factory=PoolCounters)
    failure_streak: int = field(init=False, default=0)
    braked_until: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("sandbox pool size must be >= 1")
        if self.ttl_s <= 0 or self.max_ttl_s < self.ttl_s:
            raise ValueError("sandbox lease ttl must be > 0 and <= max_ttl_s")
        self.slots = [Slot(i) for i in range(self.size)]

    # -- handing out ----------------------------------------------------------
    def braked(self) -> bool:
        return self.clock() < self.braked_until

    def reserve(self) -> int | Refusal:
        """Take a free slot for a health check before granting it, or say why not."""
        now = self.clock()
        if now < self.braked_until:
            self.counters.refused += 1
            # A recheck that passes lifts the brake early: hint whichever comes first.
            rechecks = [s.next_check_at for s in self.slots if s.state == "unhealthy"]
            return Refusal("braked", max(0.0, min([self.braked_until, *rechecks]) - now))
        for slot in self.slots:
            if slot.state == "free":
                slot.state = "checking"
                return slot.index
        self.counters.refused += 1
        return Refusal("exhausted", self.retry_after_s)

    def grant(self, index: int, task_id: str, ttl_s: float | None = None) -> Lease:
        """The reserved slot passed its check: lease it to ``task_id``."""
        slot = self._slot(index, "checking")
        self._healthy(slot)
        ttl = self._ttl(ttl_s)
        lease = Lease(self.new_id(), index, task_id, ttl, self.clock() + ttl)
        slot.state, slot.lease = "leased", lease
        self.leases[lease.id] = lease
        self.counters.granted += 1
        return lease

    def failed(self, index: int) -> None:
        """A health check of a reserved or cleaning slot failed: it goes unhealthy."""
        slot = self.slots[index]
        if slot.state not in ("checking", "cleaning"):
            raise ValueError(f"slot {index} is {slot.state}, not being checked")
        slot.state, slot.lease = "unhealthy", None
        slot.failures += 1
        now = self.clock()
        slot.next_check_at = now + self.recheck.delay(slot.failures - 1)
        self.counters.health_failed += 1
        self.failure_streak += 1
        if self.failure_streak >= self.brake_after and now >= self.braked_until:
            self.braked_until = now + self.brake_s
            self.counters.brakes += 1

    def cleaned(self, index: int, ok: bool) -> None:
        """A cleaning slot's directory was rebuilt (and checked, if asked): free or unhealthy."""
        slot = self._slot(index, "cleaning")
        if not ok:
            self.failed(index)
            return
        if slot.failures:
            self._healthy(slot)  # a recheck passed: the slot is back
        slot.state = "free"

    def _healthy(self, slot: Slot) -> None:
        slot.failures = 0
        self.failure_streak = 0
        self.counters.health_ok += 1
        self.braked_until = 0.0  # one good sandbox releases the brake

    # -- leases ---------------------------------------------------------------
    def get(self, lease_id: str) -> Lease:
        lease = self.leases.get(lease_id)
        if lease is None:
            raise UnknownLease(lease_id)
        return lease

    def renew(self, lease_id: str, ttl_s: float | None = None) -> Lease:
        lease = self.get(lease_id)
        lease.ttl_s = self._ttl(ttl_s)
        lease.expires_at = max(lease.expires_at, self.clock() + lease.ttl_s)
        return lease

    def begin_exec(self, lease_id: str) -> Lease:
        lease = self.get(lease_id)
        lease.busy += 1
        return lease

    def end_exec(self, lease_id: str) -> None:
        lease = self.leases.get(lease_id)
        if lease is None:
            return  # released while it ran; the slot is already being cleaned
        lease.busy = max(0, lease.busy - 1)
        lease.expires_at = max(lease.expires_at, self.clock() + lease.ttl_s)

    def release(self, lease_id: str) -> Lease:
        """End a lease; its slot goes to cleaning. Raises ``UnknownLease``."""
        lease = self.get(lease_id)
        self._end(lease)
        self.counters.released += 1
        return lease

    def release_all(self) -> list[Lease]:
        ended = list(self.leases.values())
        for lease in ended:
            self._end(lease)
        self.counters.released += len(ended)
        return ended

    def reap(self) -> list[Lease]:
        """End every lease past its expiry with no execution in flight (its task died)."""
        now = self.clock()
        expired = [ls for ls in self.leases.values() if ls.expires_at <= now and ls.busy == 0]
        for lease in expired:
            self._end(lease)
        self.counters.reclaimed += len(expired)
        return expired

    def _end(self, lease: Lease) -> None:
        del self.leases[lease.id]
        slot = self.slots[lease.slot]
        slot.state, slot.lease = "cleaning", None

    # -- maintenance ------------------------------------------------------------
    def due_rechecks(self) -> list[int]:
        """Unhealthy slots whose backoff ran out: they go to cleaning (rebuild and check)."""
        now = self.clock()
        due = [s.index for s in self.slots if s.state == "unhealthy" and s.next_check_at <= now]
        for index in due:
            self.slots[index].state = "cleaning"
        return due

    def next_deadline(self) -> float | None:
        """The earliest time something falls due (a lease expiry or a recheck)."""
        times = [ls.expires_at for ls in self.leases.values() if ls.busy == 0]
        times += [s.next_check_at for s in self.slots if s.state == "unhealthy"]
        return min(times, default=None)

    def counts(self) -> dict[str, int]:
        out = {state: 0 for state in ("free", "checking", "leased", "cleaning", "unhealthy")}
        for slot in self.slots:
            out[slot.state] += 1
        return out

    def _slot(self, index: int, expected: SlotState) -> Slot:
        slot = self.slots[index]
        if slot.state != expected:
            raise ValueError(f"slot {index} is {slot.state}, expected {expected}")
        return slot

    def _ttl(self, ttl_s: float | None) -> float:
        return self.ttl_s if ttl_s is None else min(max(ttl_s, 1.0), self.max_ttl_s)
