"""Fleet-wide LLM endpoint state in a JetStream key-value bucket.

Implements ``matrix_p2p.llm.FleetState`` for a fleet of worker processes:
one key per endpoint (a KV-safe encoding of its URL), the value the msgspec
JSON of the latest ``EndpointState`` any worker published, history 1, and a
TTL so that what nobody refreshes expires. A watcher task owned by this
object delivers every update, remote or local, to the subscribed callbacks;
``latest()`` is loaded before ``start()`` returns, so a new worker begins
from the fleet's learned limits instead of probing from zero.

Error handling: nothing here crashes an LLM client. ``publish`` raises
``BusError`` (the client's publisher logs it and tries again later); the
watcher logs a failure, backs off (jittered, from 0.1 s up to ``backoff_cap_s``)
and watches again, reading the whole bucket afresh; an undecodable value or a
failing callback is logged and skipped. A watch that stays silent for
``resync_s`` is recreated, which bounds how stale a silently broken watch
(for example after a broker restart) can leave this worker.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import time
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
from nats.js.kv import KV_DEL, KV_PURGE

from matrix_p2p.aio import pause
from matrix_p2p.bus.errors import TimedOut, translate
from matrix_p2p.bus.watched_kv import open_bucket, watch_until
from matrix_p2p.errors import BusError
from matrix_p2p.llm.fleet import EndpointState, Subscribers

log = structlog.get_logger(__name__)

FLEET_BUCKET = "MX_LLM_FLEET"
DEFAULT_TTL_S = 300.0  # an endpoint nobody talked to for 5 minutes: start over
DEFAULT_RESYNC_S = 30.0

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(EndpointState)


def endpoint_key(url: str) -> str:
    """A KV key for an endpoint URL: unpadded base64url (KV keys allow
    ``[-_=./A-Za-z0-9]``; URLs contain ``:``), reversible by ``key_endpoint``."""
    return base64.urlsafe_b64encode(url.encode()).rstrip(b"=").decode("ascii")


def key_endpoint(key: str) -> str:
    """The URL a key encodes. Raises ``ValueError`` for a key not made by ``endpoint_key``."""
    try:
        return base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"not an endpoint key: {key!r}") from exc


class KVFleetState(Subscribers):
    """``FleetState`` backed by a JetStream KV bucket shared by every worker on the bus.

    Use as ``async with KVFleetState(js) as fleet`` (or ``start()``/``close()``),
    then hand ``fleet`` to the ``LLMClient``\\ s of this process.
    """

    def __init__(
        self,
        js: Any,
        *,
        bucket: str = FLEET_BUCKET,
        ttl_s: float = DEFAULT_TTL_S,
        replicas: int = 1,
        resync_s: float = DEFAULT_RESYNC_S,
        backoff_cap_s: float = 5.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self._js = js
        self.bucket = bucket
        self.ttl_s = ttl_s
        self.replicas = replicas
        self.resync_s = resync_s
        self.backoff_cap_s = backoff_cap_s
        self._wall = wall_clock
        self._kv: Any = None
        self._latest: dict[str, EndpointState] = {}
        self._revision: dict[str, int] = {}  # per url: the newest revision delivered
        self._stop = asyncio.Event()
        self._loaded = asyncio.Event()  # the first full read of the bucket is done
        self._task: asyncio.Task[None] | None = None
        self.watch_failures = 0  # for tests and status displays

    # -- lifecycle ------------------------------------------------------------
    async def __aenter__(self) -> KVFleetState:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, load_timeout_s: float = 5.0) -> None:
        """Start watching; return once the bucket was read (or ``load_timeout_s``
        passed: then the fleet's state arrives later, when the watch succeeds)."""
        if self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(
            self._watch_loop(), name=f"fleet-kv-{self.bucket}"
        )
        try:
            async with asyncio.timeout(load_timeout_s):
                await self._loaded.wait()
        except TimeoutError:
            log.warning("fleet_kv.load_slow", bucket=self.bucket, waited_s=load_timeout_s)

    async def close(self) -> None:
        """Stop the watcher and wait for it. Safe to call twice."""
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- FleetState -----------------------------------------------------------
    async def publish(self, endpoint: str, state: EndpointState) -> None:
        """Put ``state`` as the endpoint's latest. Raises ``BusError`` on failure."""
        kv = await self._bucket()
        try:
            with translate(f"fleet state put to {self.bucket}"):
                revision = await kv.put(endpoint_key(endpoint), _encoder.encode(state))
        except BusError:
            self._kv = None  # reopen next time: the bucket may have been deleted
            raise
        # Local subscribers hear it now; the watcher's echo of the same revision is skipped.
        self._deliver(endpoint, state, int(revision))

    def latest(self) -> dict[str, EndpointState]:
        horizon = self._wall() - self.ttl_s
        return {u: s for u, s in self._latest.items() if s.updated_at >= horizon}

    # -- internals --------------------------------------------------------------
    async def _bucket(self) -> Any:
        if self._kv is None:
            self._kv = await open_bucket(self._js, self.bucket, ttl_s=self.ttl_s,
                                         replicas=self.replicas,
                                         description="matrix_p2p: LLM endpoint state shared by workers")
        return self._kv

    async def _watch_loop(self) -> None:
        await watch_until(self._stop, self.bucket, self._bucket, self._consume, self._failed,
                          self.backoff_cap_s)

    async def _failed(self, exc: BusError, delay: float) -> None:
        self.watch_failures += 1
        self._kv = None  # reopen: the bucket may have been recreated
        log.warning("fleet_kv.watch_failed", bucket=self.bucket, error=str(exc), retry_in_s=delay)
        await pause(delay, self._stop)

    async def _consume(self, watcher: Any) -> None:
        """Deliver updates until ``resync_s`` passes without one (then the caller
        watches afresh) or the watch fails."""
        while not self._stop.is_set():
            try:
                with translate(f"watch key-value bucket {self.bucket}"):
                    entry = await watcher.updates(timeout=self.resync_s)
            except TimedOut:
                return
            if entry is None:  # the initial values have all been delivered
                self._loaded.set()
                continue
            self._on_entry(entry)

    def _on_entry(self, entry: Any) -> None:
        try:
            url = key_endpoint(entry.key)
        except ValueError:
            log.warning("fleet_kv.bad_key", bucket=self.bucket, key=entry.key)
            return
        if entry.operation in (KV_DEL, KV_PURGE):
            self._latest.pop(url, None)
            return
        try:
            state = _decoder.decode(entry.value or b"")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("fleet_kv.bad_value", bucket=self.bucket, endpoint=url, error=str(exc))
            return
        self._deliver(url, state, int(entry.revision or 0), watched=True)

    def _deliver(self, url: str, state: EndpointState, revision: int, *,
                 watched: bool = False) -> None:
        seen = self._revision.get(url, 0)
        # Our own put comes back through the watch, and a fresh watch re-reads
        # every key: skip what was delivered already. The watch is ordered, so
        # any other revision it brings is news (a recreated bucket starts again
        # at 1); a put's own revision is news only if the watch has not passed it.
        if revision and (revision == seen or (not watched and revision < seen)):
            return
        if revision:
            self._revision[url] = revision
        self._latest[url] = state
        self.notify(url, state)
