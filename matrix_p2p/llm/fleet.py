"""Fleet-wide endpoint state shared between worker processes.

Each client publishes what it learned about an endpoint (its limit, an
ejection, a 429 with Retry-After) and applies what others publish: a new
worker starts from the fleet's learned limit, and one worker's 429 makes the
others back off that endpoint too. The protocol is small and the state is a
msgspec struct so that a NATS KV bucket can carry it (written in the bus
module; this package never imports nats).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import msgspec
import structlog

log = structlog.get_logger(__name__)

Callback = Callable[[str, "EndpointState"], None]


class EndpointState(msgspec.Struct, kw_only=True):
    """One worker's view of one endpoint. Times are wall-clock (``time.time()``)."""

    limit: int
    healthy: bool = True
    retry_after_until: float = 0.0
    last_429_at: float = 0.0
    updated_at: float = 0.0
    worker: str = ""


@runtime_checkable
class FleetState(Protocol):
    async def publish(self, endpoint: str, state: EndpointState) -> None:
        """Store ``state`` as the latest for ``endpoint`` and notify subscribers."""

    def latest(self) -> dict[str, EndpointState]:
        """The latest state per endpoint url (normalised, without ``/v1``)."""

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Call ``callback(endpoint, state)`` on every update (own ones included;
        callers filter by ``worker``). Must not block. Returns an unsubscribe function."""


class Subscribers:
    """The subscriber list every FleetState implementation keeps."""

    def __init__(self) -> None:
        self._subscribers: list[Callback] = []

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def notify(self, endpoint: str, state: EndpointState) -> None:
        for cb in list(self._subscribers):
            try:
                cb(endpoint, state)
            except Exception:  # a subscriber's bug must not stop the others or the watch
                log.exception("fleet.subscriber_failed", endpoint=endpoint)


class InMemoryFleetState(Subscribers):
    """FleetState for one process (tests, the embedded single-machine run)."""

    def __init__(self) -> None:
        super().__init__()
        self._latest: dict[str, EndpointState] = {}

    async def publish(self, endpoint: str, state: EndpointState) -> None:
        self._latest[endpoint] = state
        self.notify(endpoint, state)

    def latest(self) -> dict[str, EndpointState]:
        return dict(self._latest)


class RemoteEffect(msgspec.Struct, frozen=True):
    """What another worker's state means for this client's endpoint."""

    block_until: float | None = None  # this client's clock
    congestion: bool = False  # a fresh 429 seen elsewhere: decrease here too


RECENT_429_S = 5.0


def remote_effect(
    state: EndpointState, *, now: float, wall_now: float, seen_429_at: float
) -> RemoteEffect:
    """Translate a remote state into local actions. Pure.

    ``now`` is this client's (monotonic) clock, ``wall_now`` the wall clock,
    ``seen_429_at`` the latest remote ``last_429_at`` already acted upon.
    """
    block = None
    if state.retry_after_until > wall_now:
        block = now + (state.retry_after_until - wall_now)
    fresh = state.last_429_at > seen_429_at and wall_now - state.last_429_at < RECENT_429_S
    return RemoteEffect(block_until=block, congestion=fresh)


def significant_change(published: EndpointState | None, current: EndpointState) -> bool:
    """Worth telling the fleet: a limit change over 10 %, health, or a new 429."""
    if published is None:
        return True
    if published.healthy != current.healthy:
        return True
    if current.last_429_at > published.last_429_at:
        return True
    if current.retry_after_until > published.retry_after_until:
        return True
    return abs(current.limit - published.limit) > 0.1 * max(1, published.limit)
