"""One client's side of the fleet state: publish what it learned about its
endpoints, apply what other workers published.

The protocol and its pure rules (``remote_effect``, ``significant_change``)
are in ``fleet``; this module carries them out for one client. Publishing is
batched per endpoint (at most every ``fleet_publish_interval_s``) by one
background loop, so the request path only marks an endpoint dirty.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from matrix_p2p.aio import pause
from matrix_p2p.backoff import Retrying
from matrix_p2p.llm.endpoints import Endpoints
from matrix_p2p.llm.fleet import EndpointState, FleetState, remote_effect, significant_change
from matrix_p2p.llm.pool import Endpoint

log = structlog.get_logger(__name__)

PUBLISH_RETRY_CAP_S = 10.0


class FleetSync:
    """Shares endpoint state with the other workers through ``fleet``; with no
    fleet every method is a no-op, so the client need not ask."""

    def __init__(
        self,
        fleet: FleetState | None,
        endpoints: Endpoints,
        *,
        worker_id: str,
        interval_s: float,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self.fleet = fleet
        self._endpoints = endpoints
        self._worker_id = worker_id
        self._interval_s = interval_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._dirty: set[str] = set()
        self._dirty_event = asyncio.Event()
        self._published: dict[str, EndpointState] = {}
        self._published_at: dict[str, float] = {}
        # A broker outage must not turn into a warning every interval per endpoint.
        self._retry = Retrying(max(interval_s, 0.1), PUBLISH_RETRY_CAP_S)
        self._unsubscribe: Callable[[], None] | None = None

    def subscribe(self) -> None:
        """Start applying other workers' updates."""
        if self.fleet is not None:
            self._unsubscribe = self.fleet.subscribe(self._on_fleet_state)

    def unsubscribe(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    # -- outbound -----------------------------------------------------------------
    def maybe_publish(self, ep: Endpoint, urgent: bool = False) -> None:
        """Queue ``ep``'s state for the publisher if it changed enough (or ``urgent``)."""
        if self.fleet is None:
            return
        if urgent or significant_change(self._published.get(ep.url), self.state_of(ep)):
            self._dirty.add(ep.url)
            self._dirty_event.set()

    def state_of(self, ep: Endpoint) -> EndpointState:
        now, wall = self._clock(), self._wall_clock()
        blocked = ep.limiter.blocked_until
        return EndpointState(
            limit=ep.limiter.limit,
            healthy=ep.breaker.healthy,
            retry_after_until=wall + (blocked - now) if blocked > now else 0.0,
            last_429_at=ep.last_429_wall,
            updated_at=wall,
            worker=self._worker_id,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Publish dirty endpoints, each at most every ``interval_s``, until ``stop``.

        Error handling: a failed publish is logged and retried with jittered
        backoff (the endpoint stays dirty); only cancellation ends the loop early.
        """
        fleet = self.fleet
        assert fleet is not None
        while not stop.is_set():
            await self._dirty_event.wait()
            self._dirty_event.clear()
            now = self._clock()
            later: list[float] = []
            published = failed = False
            for url in list(self._dirty):
                ep = self._endpoints.get(url)
                if ep is None:
                    self._dirty.discard(url)
                    continue
                due = self._published_at.get(url, -float("inf")) + self._interval_s
                if due > now:
                    later.append(due)
                    continue
                # Clean before the await: a change made meanwhile marks it dirty again.
                self._dirty.discard(url)
                state = self.state_of(ep)
                try:
                    await fleet.publish(url, state)
                except Exception as e:  # a broker hiccup must not stop publishing
                    log.warning("llm.fleet_publish_failed", endpoint=url, error=str(e))
                    self._dirty.add(url)
                    failed = True
                    continue
                self._published[url] = state
                self._published_at[url] = now
                published = True
            if failed:
                later.append(now + self._retry.next())
            elif published:
                self._retry.reset()
            if later:
                await pause(min(later) - now, stop)
                self._dirty_event.set()

    # -- inbound ------------------------------------------------------------------
    def adopt(self, ep: Endpoint) -> None:
        """A new endpoint starts from what the fleet learned about it."""
        if self.fleet is None:
            return
        remote = self.fleet.latest().get(ep.url)
        if remote is not None and remote.worker != self._worker_id:
            ep.limiter.adopt(remote.limit)
            # The learned limit already reflects that worker's last 429.
            ep.seen_remote_429 = remote.last_429_at
            self._apply_remote(ep, remote)

    def _on_fleet_state(self, url: str, state: EndpointState) -> None:
        if state.worker == self._worker_id:
            return
        ep = self._endpoints.get(url)
        if ep is not None:
            self._apply_remote(ep, state)

    def _apply_remote(self, ep: Endpoint, state: EndpointState) -> None:
        now = self._clock()
        eff = remote_effect(state, now=now, wall_now=self._wall_clock(),
                            seen_429_at=ep.seen_remote_429)
        if eff.block_until is not None and eff.block_until > ep.limiter.blocked_until + 0.5:
            ep.limiter.block_until(eff.block_until)
            log.info("llm.endpoint_backoff", endpoint=ep.url, reason="fleet",
                     worker=state.worker, retry_after_s=round(eff.block_until - now, 3))
        if eff.congestion:
            ep.seen_remote_429 = state.last_429_at
            before = ep.limiter.limit
            if ep.limiter.on_congestion(now):
                log.info("llm.limit_decreased", endpoint=ep.url, reason="fleet_429",
                         worker=state.worker, limit=ep.limiter.limit, previous=before)
