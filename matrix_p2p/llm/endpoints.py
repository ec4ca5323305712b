"""The client's set of endpoints: which exist, which take new requests, which one
a request should go to, and the endpoints file that adds and removes them.

Per-endpoint state (limiter, breaker, counters) is ``pool.Endpoint``; this
module owns the collection. An endpoint dropped from the file is marked
``removed`` rather than deleted: its in-flight requests finish and its
counters stay in the stats.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path

import structlog

from matrix_p2p.aio import pause
from matrix_p2p.llm.breaker import CircuitBreaker
from matrix_p2p.llm.config import LLMConfig
from matrix_p2p.llm.limiter import AIMDLimiter
from matrix_p2p.llm.pool import Endpoint, EndpointStats, select
from matrix_p2p.llm.registry import Registration
from matrix_p2p.llm.types import LLMError
from matrix_p2p.llm.wire import parse_endpoints_file

log = structlog.get_logger(__name__)

_UNREADABLE = (-1, -1)


class Endpoints:
    """Endpoints by normalised URL.

    ``on_added(ep)`` runs when an endpoint is first created, before it takes
    requests (the fleet sync seeds it with what other workers learned);
    ``on_changed()`` runs after the endpoints file changed the set (waiting
    requests may now have somewhere to go).
    """

    def __init__(
        self,
        config: LLMConfig,
        *,
        on_added: Callable[[Endpoint], None],
        on_changed: Callable[[], None],
    ) -> None:
        self._config = config
        self._on_added = on_added
        self._on_changed = on_changed
        self._by_url: dict[str, Endpoint] = {}
        self._file_sig: tuple[int, int] | None = None
        self._set_changed: list[asyncio.Future[None]] = []  # wait_changed() callers

    # -- views ------------------------------------------------------------------
    def get(self, url: str) -> Endpoint | None:
        return self._by_url.get(url)

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self._by_url.values())

    def urls(self) -> list[str]:
        """URLs that take new requests."""
        return [u for u, ep in self._by_url.items() if not ep.removed]

    def stats(self) -> list[EndpointStats]:
        return [ep.stats() for ep in self._by_url.values()]

    # -- choosing ---------------------------------------------------------------
    def select(
        self, now: float, *, sticky: Endpoint | None, exclude: Collection[str]
    ) -> Endpoint | None:
        """Least outstanding requests (see ``pool.select``); None when all are full."""
        return select(self._by_url.values(), now, sticky=sticky, exclude=exclude)

    def has_untried(self, tried: Collection[str], now: float) -> bool:
        """Could a retry go to an endpoint this request has not tried yet?"""
        return any(u not in tried and ep.admissible(now) for u, ep in self._by_url.items())

    def why_blocked(self, now: float, deadline: float) -> float | LLMError:
        """Nothing is admissible: return when to look again, or the error to give up with."""
        live = [ep for ep in self._by_url.values() if not ep.removed]
        if not live:
            return LLMError(kind="no_endpoints", message="the endpoint pool is empty")
        if all(ep.breaker.state == "open" and ep.inflight == 0 for ep in live):
            reopen = min(ep.breaker.reopen_at() for ep in live)
            return LLMError(
                kind="no_endpoints",
                message=f"all {len(live)} endpoints are ejected (circuit open)",
                retry_after_s=max(0.0, reopen - now),
            )
        releases_pending = any(ep.inflight > 0 for ep in live)
        changes = [t for ep in live if (t := ep.next_change(now)) is not None]
        wake_at = min(changes) if changes else deadline
        if not releases_pending and wake_at > deadline:
            return LLMError(
                kind="rate_limited",
                message="every endpoint is backing off (Retry-After)",
                retry_after_s=wake_at - now,
            )
        return wake_at

    # -- adding and removing ------------------------------------------------------
    def add(self, url: str, *, from_config: bool = False, from_file: bool = False) -> None:
        """Add ``url`` (normalised), or take a removed one back into service."""
        ep = self._by_url.get(url)
        if ep is None:
            cfg = self._config
            limiter = AIMDLimiter(
                cfg.initial_limit, cfg.min_limit, cfg.max_limit,
                decrease_factor=cfg.decrease_factor, latency_tolerance=cfg.latency_tolerance,
            )
            ep = Endpoint(url=url, limiter=limiter,
                          breaker=CircuitBreaker(cfg.breaker_failures, cfg.breaker_cooldown_s))
            self._by_url[url] = ep
            self._on_added(ep)
            log.info("llm.endpoint_added", endpoint=url, limit=ep.limiter.limit)
        elif ep.removed:
            ep.removed = False
            log.info("llm.endpoint_added", endpoint=url, limit=ep.limiter.limit)
        ep.from_config = ep.from_config or from_config
        ep.from_file = ep.from_file or from_file

    def set_file_urls(self, urls: list[str]) -> None:
        """The endpoints file now lists ``urls``: add the new ones, remove the ones
        it dropped (unless the config names them too)."""
        wanted = set(urls)
        for url in urls:
            self.add(url, from_file=True)
        for url, ep in self._by_url.items():
            if ep.from_file and url not in wanted:
                ep.from_file = False
                self._maybe_remove(ep)
        self._on_changed()

    def set_registered(self, entries: Mapping[str, Registration], now: float,
                       wall_now: float) -> None:
        """The replica registry now holds ``entries`` (live, serving our model): add
        the new ones, take their published load, remove the ones that left or lapsed
        (unless the config or the file names them)."""
        before = set(self.urls())
        for url, reg in entries.items():
            self.add(url)
            ep = self._by_url[url]
            ep.from_registry = True
            ep.published = reg.load
            ep.published_at = now - max(0.0, wall_now - reg.updated_at)  # on our clock
            ep.capacity_hint = reg.max_num_seqs
        for url, ep in self._by_url.items():
            if ep.from_registry and url not in entries:
                ep.from_registry = False
                ep.published = None
                self._maybe_remove(ep)
        if set(self.urls()) != before:
            self._on_changed()
            self._notify_set_changed()

    def _maybe_remove(self, ep: Endpoint) -> None:
        if not ep.from_config and not ep.from_file and not ep.from_registry and not ep.removed:
            ep.removed = True
            log.info("llm.endpoint_removed", endpoint=ep.url, inflight=ep.inflight)

    def reload_file(self) -> bool:
        """Re-read the endpoints file if it changed (mtime or size). True when it was."""
        assert self._config.endpoints_file is not None
        path = Path(self._config.endpoints_file)
        try:
            st = path.stat()
            sig = (st.st_mtime_ns, st.st_size)
            if sig == self._file_sig:
                return False
            text = path.read_text()
        except OSError as e:
            if self._file_sig != _UNREADABLE:  # log once per outage, not once per poll
                log.warning("llm.endpoints_file_unreadable", path=str(path), error=str(e))
                self._file_sig = _UNREADABLE
            return False
        self._file_sig = sig
        self.set_file_urls(parse_endpoints_file(text))
        return True

    async def watch_file(self, stop: asyncio.Event) -> None:
        """Poll the endpoints file every ``endpoints_poll_s`` until ``stop``.

        Error handling: an unreadable file keeps the current set (logged once
        until it is readable again); nothing here raises.
        """
        while not stop.is_set():
            if await pause(self._config.endpoints_poll_s, stop):
                return
            if self.reload_file():
                self._notify_set_changed()

    async def wait_changed(self) -> None:
        """Return after the next change the endpoints file or the registry makes."""
        fut = asyncio.get_running_loop().create_future()
        self._set_changed.append(fut)
        try:
            await fut
        finally:
            if fut in self._set_changed:
                self._set_changed.remove(fut)

    def _notify_set_changed(self) -> None:
        waiters, self._set_changed = self._set_changed, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
