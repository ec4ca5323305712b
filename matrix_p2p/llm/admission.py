"""Admission: a request gets a slot on an endpoint, or waits its turn for one.

One fair queue (``FairQueue``) serves both ways in: the general queue of
requests that may go to any endpoint, and one queue per endpoint for sticky
requests that wait for their task's endpoint (prefix-cache reuse).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from matrix_p2p.llm.config import LLMConfig
from matrix_p2p.llm.endpoints import Endpoints
from matrix_p2p.llm.pool import Endpoint
from matrix_p2p.llm.types import LLMError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Later:
    """A turn's answer "nothing for me yet": look again at ``at`` or when woken."""

    at: float


class _Waiter:
    __slots__ = ("fut",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.fut: asyncio.Future[None] = loop.create_future()


class FairQueue:
    """First come, first served among requests that wait for the same slots.

    Only the head of the queue may take a slot, and a newcomer queues behind
    anyone already waiting (no barging). Whoever leaves the head (admitted,
    given up, cancelled) wakes the next one, so a freed slot wakes one waiter
    rather than all of them; ``wake()`` is for the events that may free a
    slot (a release, a changed endpoint set).
    """

    __slots__ = ("_clock", "_waiters")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._waiters: deque[_Waiter] = deque()

    def __len__(self) -> int:
        return len(self._waiters)

    def wake(self) -> None:
        """Let the head look again."""
        if self._waiters:
            head = self._waiters[0]
            if not head.fut.done():
                head.fut.set_result(None)

    def wake_all(self) -> None:
        """Let every waiter look again (the client is closing)."""
        for w in self._waiters:
            if not w.fut.done():
                w.fut.set_result(None)

    async def wait(self, turn: Callable[[float, bool], T | Later]) -> T:
        """Call ``turn(now, at_head)`` until it returns something other than ``Later``.

        ``turn`` may take a slot only when ``at_head``; it gives up (a timeout,
        an unusable endpoint) by returning that outcome. The caller joins the
        queue only when it must wait, so an uncontended request costs one call.
        """
        waiter: _Waiter | None = None
        loop = asyncio.get_running_loop()
        try:
            while True:
                now = self._clock()
                if waiter is None and self._waiters:
                    waiter = self._join(loop)  # others wait already: no barging
                outcome = turn(now, waiter is None or self._waiters[0] is waiter)
                if not isinstance(outcome, Later):
                    return outcome
                if waiter is None:
                    waiter = self._join(loop)
                if waiter.fut.done():
                    waiter.fut = loop.create_future()
                await asyncio.wait([waiter.fut], timeout=max(0.0, outcome.at - now))
        finally:
            if waiter is not None:
                was_head = self._waiters[0] is waiter
                self._waiters.remove(waiter)
                if was_head:
                    self.wake()

    def _join(self, loop: asyncio.AbstractEventLoop) -> _Waiter:
        waiter = _Waiter(loop)
        self._waiters.append(waiter)
        return waiter


class Admission:
    """Counts requests into endpoints, in arrival order, within the wait budget.

    A request pinned to an endpoint (sticky) first waits up to
    ``sticky_wait_s`` in that endpoint's queue while the endpoint stays
    healthy; then, or without a pin, it takes the least loaded endpoint from
    the general queue. ``release`` wakes both queues the slot concerns.
    """

    def __init__(
        self, config: LLMConfig, endpoints: Endpoints, clock: Callable[[], float]
    ) -> None:
        self._config = config
        self._endpoints = endpoints
        self._clock = clock
        self._queue = FairQueue(clock)
        self._pinned: dict[str, FairQueue] = {}  # url -> sticky requests waiting for it
        self._closed = False
        self.sticky_hits = 0
        self.sticky_misses = 0

    async def acquire(self, pinned_url: str | None, tried: set[str]) -> Endpoint | LLMError:
        """An endpoint with this request counted in, or why there is none in time.

        ``tried``: endpoints that failed this request already, used only when
        nothing else is free.
        """
        cfg = self._config
        budget = cfg.queue_wait_s if cfg.queue_wait_s is not None else cfg.timeout_s
        deadline = self._clock() + budget
        pinned = self._endpoints.get(pinned_url) if pinned_url and pinned_url not in tried else None
        if pinned is not None and pinned_url is not None and cfg.sticky_wait_s > 0:
            until = min(deadline, self._clock() + cfg.sticky_wait_s)
            if await self._wait_pinned(pinned, until):
                self._count_sticky(pinned, pinned_url)
                return pinned
            # unhealthy, removed, or busy for too long: any endpoint (the pinned one first)

        def turn(now: float, at_head: bool) -> Endpoint | LLMError | Later:
            if self._closed:
                return LLMError(kind="no_endpoints", message="client is closed")
            wake_at = deadline
            if at_head:
                ep = self._endpoints.select(now, sticky=pinned, exclude=tried)
                if ep is not None:
                    ep.admit(now)
                    if pinned_url is not None:
                        self._count_sticky(ep, pinned_url)
                    return ep
                verdict = self._endpoints.why_blocked(now, deadline)
                if isinstance(verdict, LLMError):
                    return verdict
                wake_at = min(verdict, deadline)
            if now >= deadline:
                return LLMError(
                    kind="timeout", message=f"no endpoint slot freed within {budget:.1f}s"
                )
            return Later(wake_at)

        return await self._queue.wait(turn)

    async def _wait_pinned(self, ep: Endpoint, until: float) -> bool:
        """Wait for a slot on the task's own endpoint while it stays healthy, at most
        until ``until``; True when admitted there. Waiting out a short Retry-After
        or a full batch keeps the task's prefix cache; a stalled or ejected
        replica lets the task go (``sticky_wait_s``)."""
        queue = self._pinned.get(ep.url)
        if queue is None:
            queue = self._pinned[ep.url] = FairQueue(self._clock)

        def turn(now: float, at_head: bool) -> bool | Later:
            if ep.removed or not ep.breaker.healthy or self._closed:
                return False
            if at_head and ep.admissible(now):
                ep.admit(now)
                return True
            if now >= until:
                return False
            change = ep.next_change(now)
            return Later(until if change is None else min(until, change))

        return await queue.wait(turn)

    def release(self, ep: Endpoint) -> None:
        """The request on ``ep`` finished: its slot goes to the next waiter."""
        ep.release()
        queue = self._pinned.get(ep.url)
        if queue is not None:
            queue.wake()
        self._queue.wake()

    def wake(self) -> None:
        """The endpoint set changed: the head of the general queue looks again."""
        self._queue.wake()

    def close(self) -> None:
        """Every waiter gives up now."""
        self._closed = True
        self._queue.wake_all()
        for queue in self._pinned.values():
            queue.wake_all()

    def _count_sticky(self, ep: Endpoint, pinned_url: str) -> None:
        if ep.url == pinned_url:
            ep.sticky_hits += 1
            self.sticky_hits += 1
        else:
            self.sticky_misses += 1
            old = self._endpoints.get(pinned_url)
            if old is not None:
                old.sticky_misses += 1
