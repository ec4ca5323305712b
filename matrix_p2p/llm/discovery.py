"""A client following the replica registry: the endpoints serving its model are the
live entries, and their published load steers routing (``scoring``).

The registry (``registry.ReplicaSource``) tells us about changes; a lapsed entry
(its registrar killed, no delete ever comes) is noticed by time, so the follower
also looks every ``interval_s``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from matrix_p2p.llm.endpoints import Endpoints
from matrix_p2p.llm.registry import ReplicaSource, serving

log = structlog.get_logger(__name__)

FOLLOW_INTERVAL_S = 1.0


class Follower:
    """Keeps ``endpoints`` equal to the live registry entries serving ``model``."""

    def __init__(self, source: ReplicaSource, endpoints: Endpoints, *, model: str | None,
                 clock: Callable[[], float], wall_clock: Callable[[], float],
                 interval_s: float = FOLLOW_INTERVAL_S) -> None:
        self._source = source
        self._endpoints = endpoints
        self._model = model
        self._clock = clock
        self._wall = wall_clock
        self._interval_s = interval_s
        self._changed = asyncio.Event()
        self._urls: frozenset[str] = frozenset()

    def apply(self) -> list[str]:
        """Bring the endpoint set up to date now; returns the registered URLs."""
        wall = self._wall()
        live = serving(self._source.entries(), self._model, wall)
        urls = frozenset(live)
        if urls != self._urls:
            log.info("llm.registry_changed", model=self._model, endpoints=sorted(urls),
                     added=sorted(urls - self._urls), gone=sorted(self._urls - urls))
            self._urls = urls
        self._endpoints.set_registered(live, self._clock(), wall)
        return sorted(urls)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the registry until ``stop``: on every change, and every ``interval_s``.

        Error handling: nothing here raises; the source retries its own watch.
        """
        unsubscribe = self._source.subscribe(self._changed.set)
        try:
            while not stop.is_set():
                self._changed.clear()
                self.apply()
                waits = [asyncio.ensure_future(self._changed.wait()),
                         asyncio.ensure_future(stop.wait())]
                try:
                    await asyncio.wait(waits, timeout=self._interval_s,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
                    await asyncio.gather(*waits, return_exceptions=True)
        finally:
            unsubscribe()
