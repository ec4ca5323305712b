"""The fleet's replica registry in a JetStream key-value bucket.

One key per model-server replica (``fleet_kv.endpoint_key`` of its URL), the
value the msgspec JSON of its ``llm.registry.Registration``, history 1, and the
bucket's TTL (``max_age``) so that the broker drops what no registrar renews.
Registrars (``llm-register``) ``put`` and ``delete``; clients ``start()`` the
watcher and follow ``entries()`` (``llm.discovery.Follower``). The broker's TTL
sends no delete to watchers, so readers also judge liveness by the entry's own
``updated_at`` (``registry.is_live``).

Error handling: ``put``/``delete`` raise ``BusError``; the watcher logs a
failure, backs off (jittered, up to ``backoff_cap_s``) and watches again,
reading the whole bucket afresh; an undecodable value or a bad key is logged
and skipped; a failing subscriber is logged and the others still hear.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
from nats.js.kv import KV_DEL, KV_PURGE

from matrix_p2p.aio import pause
from matrix_p2p.bus.errors import TimedOut, translate
from matrix_p2p.bus.fleet_kv import endpoint_key, key_endpoint
from matrix_p2p.bus.watched_kv import open_bucket, watch_until
from matrix_p2p.errors import BusError
from matrix_p2p.llm import registry
from matrix_p2p.llm.registry import DEFAULT_REGISTRY_TTL_S, Registration, default_bucket

log = structlog.get_logger(__name__)

RESYNC_S = 30.0


class ReplicaRegistry:
    """``registry.ReplicaSource`` (after ``start()``) and the registrar's writer."""

    def __init__(self, js: Any, *, bucket: str | None = None,
                 ttl_s: float = DEFAULT_REGISTRY_TTL_S, replicas: int = 1,
                 resync_s: float = RESYNC_S, backoff_cap_s: float = 5.0) -> None:
        self._js = js
        self.bucket = bucket or default_bucket()  # $MX_LLM_REGISTRY_BUCKET or MX_LLM_REPLICAS
        self.ttl_s = ttl_s
        self.replicas = replicas
        self.resync_s = resync_s
        self.backoff_cap_s = backoff_cap_s
        self._kv: Any = None
        self._entries: dict[str, Registration] = {}
        self._subscribers: list[Callable[[], None]] = []
        self._stop = asyncio.Event()
        self._loaded = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ReplicaRegistry:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, load_timeout_s: float = 5.0) -> None:
        """Start watching; return once the bucket was read (or ``load_timeout_s`` passed)."""
        if self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(
            self._watch_loop(), name=f"registry-kv-{self.bucket}")
        try:
            async with asyncio.timeout(load_timeout_s):
                await self._loaded.wait()
        except TimeoutError:
            log.warning("registry.load_slow", bucket=self.bucket, waited_s=load_timeout_s)

    async def close(self) -> None:
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- ReplicaSource ------------------------------------------------------------
    def entries(self) -> list[Registration]:
        return list(self._entries.values())

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    # -- the registrar's side -----------------------------------------------------
    async def put(self, reg: Registration) -> None:
        """Store (or renew) ``reg``. Raises ``BusError``."""
        kv = await self._bucket()
        try:
            with translate(f"registry put to {self.bucket}"):
                await kv.put(endpoint_key(reg.url), registry.encode(reg))
        except BusError:
            self._kv = None
            raise

    async def delete(self, url: str) -> None:
        """Remove ``url``'s entry: clients stop sending it new requests. Raises ``BusError``."""
        kv = await self._bucket()
        with translate(f"registry delete from {self.bucket}"):
            await kv.delete(endpoint_key(url))

    # -- internals ----------------------------------------------------------------
    async def _bucket(self) -> Any:
        if self._kv is None:
            self._kv = await open_bucket(self._js, self.bucket, ttl_s=self.ttl_s,
                                         replicas=self.replicas,
                                         description="matrix_p2p: LLM replicas that registered themselves")
        return self._kv

    async def _watch_loop(self) -> None:
        await watch_until(self._stop, self.bucket, self._bucket, self._consume, self._failed,
                          self.backoff_cap_s)

    async def _failed(self, exc: BusError, delay: float) -> None:
        self._kv = None
        log.warning("registry.watch_failed", bucket=self.bucket, error=str(exc), retry_in_s=delay)
        await pause(delay, self._stop)

    async def _consume(self, watcher: Any) -> None:
        fresh: dict[str, Registration] | None = {}  # a new watch re-reads every key
        while not self._stop.is_set():
            try:
                with translate(f"watch key-value bucket {self.bucket}"):
                    entry = await watcher.updates(timeout=self.resync_s)
            except TimedOut:
                return
            if entry is None:  # the initial values are all in
                if fresh is not None:
                    self._entries, fresh = fresh, None
                    self._loaded.set()
                    self._notify()
                continue
            self._on_entry(entry, fresh if fresh is not None else self._entries)
            if fresh is None:
                self._notify()

    def _on_entry(self, entry: Any, into: dict[str, Registration]) -> None:
        try:
            url = key_endpoint(entry.key)
        except ValueError:
            log.warning("registry.bad_key", bucket=self.bucket, key=entry.key)
            return
        if entry.operation in (KV_DEL, KV_PURGE):
            into.pop(url, None)
            return
        try:
            into[url] = registry.decode(entry.value or b"")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("registry.bad_value", bucket=self.bucket, endpoint=url, error=str(exc))

    def _notify(self) -> None:
        for cb in list(self._subscribers):
            try:
                cb()
            except Exception:  # one subscriber's bug must not stop the others or the watch
                log.exception("registry.subscriber_failed")
