"""The LLM fleet client: the module that speaks HTTP to the model servers (``probe``
asks them once, at start, which models they serve).

Data path of one call: ``_call`` asks ``admission`` for an endpoint (least
outstanding requests, or the task's sticky one; waiting its turn when all are
full), ``_attempt`` does one HTTP request in the ``wire`` format and lets
``outcomes`` turn the answer into an ``LLMResult`` plus signals for the
limiter, the breaker and the fleet; ``_call`` retries failed attempts on other
endpoints with jittered backoff. With a response ``cache`` (``cache.py``), an identical
request is answered from the store before any of that. Background tasks owned by the client: the
endpoints file watcher (``endpoints``), the vLLM ``/metrics`` poller and the
fleet publisher (``fleet_sync``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

import aiohttp
import msgspec
import structlog

from matrix_p2p.aio import pause
from matrix_p2p.backoff import Backoff
from matrix_p2p.envelope import Usage
from matrix_p2p.llm import wire
from matrix_p2p.llm.admission import Admission
from matrix_p2p.llm.cache import ResponseCache
from matrix_p2p.llm.config import LLMConfig
from matrix_p2p.llm.discovery import Follower
from matrix_p2p.llm.endpoints import Endpoints
from matrix_p2p.llm.fleet import FleetState
from matrix_p2p.llm.fleet_sync import FleetSync
from matrix_p2p.llm.outcomes import AttemptRecorder, Outcomes
from matrix_p2p.llm.pool import Endpoint, EndpointStats, StickyMap, normalise_url
from matrix_p2p.llm.registry import ReplicaSource
from matrix_p2p.llm.types import ErrorKind, LLMError, LLMResponse, LLMResult

log = structlog.get_logger(__name__)


def session_headers(config: LLMConfig) -> dict[str, str]:
    """The headers of every request to the endpoints: JSON, and the API key from the
    environment variable ``config.api_key_env`` names (when it is set)."""
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(config.api_key_env) if config.api_key_env else None
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


class LLMClient:
    """A pool of OpenAI-compatible endpoints behind ``chat`` and ``complete``.

    Use as ``async with LLMClient(cfg) as client`` or ``start()``/``close()``.

    Error handling: ``chat``/``complete`` never raise (except ``CancelledError``);
    every failure comes back as an ``LLMError``. Connection errors, timeouts,
    5xx and 429 are retried up to ``max_retries`` times, on another endpoint
    when there is one, with jittered exponential backoff (none when the server
    gave a ``Retry-After``: the endpoint is then blocked until that time and
    the request waits for it or goes elsewhere). 4xx other than 429 is
    returned at once as ``bad_request``; an unparseable body is retried once.
    """

    def __init__(
        self,
        config: LLMConfig,
        fleet: FleetState | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        worker_id: str | None = None,
        recorder: AttemptRecorder | None = None,
        cache: ResponseCache | None = None,
        registry: ReplicaSource | None = None,
    ) -> None:
        self.config = config
        self.cache = cache  # None: every request goes to a server
        self.fleet = fleet
        self.clock = clock
        self.wall_clock = wall_clock
        self._sleep = sleep
        self._backoff = Backoff(config.backoff_base_s, config.backoff_cap_s, rng)
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._endpoints = Endpoints(config, on_added=self._endpoint_added,
                                    on_changed=self._endpoints_changed)
        self._fleet = FleetSync(fleet, self._endpoints, worker_id=self.worker_id,
                                interval_s=config.fleet_publish_interval_s,
                                clock=clock, wall_clock=wall_clock)
        self._outcomes = Outcomes(clock=clock, wall_clock=wall_clock,
                                  publish=self._fleet.maybe_publish, recorder=recorder)
        self._admission = Admission(config, self._endpoints, clock)
        # registry: the endpoints serving config.model are the fleet's registered replicas
        self._follower = (Follower(registry, self._endpoints, model=config.model, clock=clock,
                                   wall_clock=wall_clock) if registry is not None else None)
        self._sticky = StickyMap(config.sticky_capacity)
        self._usage_by_role: dict[str, Usage] = {}
        self.total_completion_tokens = 0
        self._session: aiohttp.ClientSession | None = None
        self._model_locks: dict[str, asyncio.Lock] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._closed = False

    # -- lifecycle ------------------------------------------------------------
    async def __aenter__(self) -> LLMClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the HTTP session, load endpoints, start the background tasks."""
        cfg = self.config
        headers = session_headers(cfg)
        # aiohttp's default connector caps a session at 100 connections; our
        # limiter is the real cap, so the connector only needs to stay out of the way.
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=max(1024, cfg.max_limit + 64),
            keepalive_timeout=30.0,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(connector=connector, headers=headers)
        for url in cfg.endpoints:
            self._endpoints.add(normalise_url(url), from_config=True)
        if cfg.endpoints_file:
            self._endpoints.reload_file()
        if self._follower is not None:
            self._follower.apply()
            self._spawn(self._follower.run(self._stop), "llm-registry")
        if self.fleet is not None:
            self._fleet.subscribe()
            self._spawn(self._fleet.run(self._stop), "llm-fleet-publisher")
        if cfg.endpoints_file:
            self._spawn(self._endpoints.watch_file(self._stop), "llm-endpoints-file")
        if cfg.metrics_poll_s:
            self._spawn(self._metrics_loop(cfg.metrics_poll_s), "llm-metrics")

    async def close(self) -> None:
        """Stop the background tasks and close the session. In-flight calls
        should be finished (or cancelled) by their owners first."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks.clear()
        self._fleet.unsubscribe()
        self._admission.close()
        if self._session is not None:
            await self._session.close()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        # Owned: close() cancels and awaits every task in _tasks.
        self._tasks.append(asyncio.get_running_loop().create_task(coro, name=name))

    # -- public API -----------------------------------------------------------
    async def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        role: str = "default",
        sticky_key: str | None = None,
        sticky_hint: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        **extra_body: Any,
    ) -> LLMResult:
        """One chat completion. ``extra_body`` is merged into the request JSON.

        ``sticky_hint`` is the endpoint that served this task before, possibly in
        another process (the envelope remembers it): it seeds the sticky pin.
        """
        body = wire.chat_body(messages, max_tokens, temperature, extra_body)
        return await self._cached_call("chat", body, role, sticky_key, sticky_hint)

    async def complete(
        self,
        prompt: str,
        *,
        role: str = "default",
        sticky_key: str | None = None,
        sticky_hint: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        **extra_body: Any,
    ) -> LLMResult:
        """One text completion (``/v1/completions``); arguments as for ``chat``."""
        body = wire.completion_body(prompt, max_tokens, temperature, extra_body)
        return await self._cached_call("complete", body, role, sticky_key, sticky_hint)

    def usage_by_role(self) -> dict[str, Usage]:
        return {k: Usage(prompt_tokens=v.prompt_tokens, completion_tokens=v.completion_tokens)
                for k, v in self._usage_by_role.items()}

    def usage_by_endpoint(self) -> dict[str, Usage]:
        return {s.url: s.usage for s in self._endpoints.stats()}

    def snapshot(self) -> list[EndpointStats]:
        """Per-endpoint stats (limits, counters) for progress displays and tests."""
        return self._endpoints.stats()

    def endpoints(self) -> list[str]:
        """URLs that take new requests (normalised, without ``/v1``)."""
        return self._endpoints.urls()

    async def wait_endpoints_changed(self) -> None:
        """Return after the next change of the endpoint set (for tests and displays)."""
        await self._endpoints.wait_changed()

    @property
    def sticky_hits(self) -> int:
        return self._admission.sticky_hits

    @property
    def sticky_misses(self) -> int:
        return self._admission.sticky_misses

    # -- one call: the cache ------------------------------------------------------
    async def _cached_call(
        self, kind: wire.CallKind, body: dict[str, Any], role: str, sticky_key: str | None,
        sticky_hint: str | None,
    ) -> LLMResult:
        def call() -> Awaitable[LLMResult]:
            return self._call(kind, body, role, sticky_key, sticky_hint)
        if self.cache is None:
            return await call()
        return await self.cache.through(kind, await self._cache_model(body), body, call)

    async def _cache_model(self, body: Mapping[str, Any]) -> str | None:
        # the body's model, the client's, else the first endpoint's (the docs say: set
        # `model` when replicas serve different ones); None: ask without the cache
        named = body.get("model") or self.config.model
        for ep in [] if named else [e for e in self._endpoints if not e.removed]:
            with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                if isinstance(got := await self._model_for(ep), str):
                    return got
        return str(named) if named else None

    # -- one call: retries ------------------------------------------------------
    async def _call(
        self, kind: wire.CallKind, body: dict[str, Any], role: str, sticky_key: str | None,
        sticky_hint: str | None,
    ) -> LLMResult:
        if self._session is None or self._closed:
            return LLMError(kind="no_endpoints", message="client is not started or is closed")
        sticky = sticky_key if self.config.sticky else None
        if sticky and sticky_hint and self._sticky.get(sticky) is None:
            self._sticky.pin(sticky, normalise_url(sticky_hint))
        pinned_url = self._sticky.get(sticky) if sticky else None
        tried: set[str] = set()
        last: LLMError | None = None
        bad_responses = 0
        attempts = 0
        for retry in range(self.config.max_retries + 1):
            got = await self._admission.acquire(pinned_url, tried)
            if isinstance(got, LLMError):
                last = got
                if got.kind != "no_endpoints" or self._closed:
                    break  # waiting longer would exceed the caller's budget
                if retry < self.config.max_retries:
                    await self._sleep(self._backoff.delay(retry))
                continue
            ep = got
            attempts += 1
            t0 = self.clock()
            try:
                result = await self._attempt(ep, kind, body, attempts)
            finally:
                self._admission.release(ep)
            self._outcomes.finished(ep, result, self.clock() - t0)
            if isinstance(result, LLMResponse):
                self._account(ep, role, result)
                if sticky is not None:
                    self._sticky.pin(sticky, ep.url)
                return result
            last = result
            # Sticky routing holds while the task's endpoint is healthy: a capacity
            # signal (429/503: it answered) retries there, after its Retry-After or
            # a backoff; anything else moves the request on to another endpoint.
            stay = (ep.url == pinned_url and result.status in (429, 503)
                    and not ep.removed and ep.breaker.healthy)
            if not stay:
                tried.add(ep.url)
            if result.kind == "bad_request":
                break
            if result.kind == "bad_response":
                bad_responses += 1
                if bad_responses > 1:
                    break
            if retry < self.config.max_retries and (
                stay or not self._endpoints.has_untried(tried, self.clock())
            ) and result.retry_after_s is None:
                await self._sleep(self._backoff.delay(retry))
        assert last is not None
        return msgspec.structs.replace(last, attempts=max(1, attempts))

    def _account(self, ep: Endpoint, role: str, r: LLMResponse) -> None:
        u = Usage(prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens)
        self._usage_by_role[role] = self._usage_by_role.get(role, Usage()) + u
        self._outcomes.tokens(role, r)
        ep.usage = ep.usage + u
        self.total_completion_tokens += r.completion_tokens

    # -- one HTTP attempt ------------------------------------------------------
    async def _attempt(
        self, ep: Endpoint, kind: wire.CallKind, body: dict[str, Any], attempt: int
    ) -> LLMResult:
        assert self._session is not None
        t0 = self.clock()
        try:
            if "model" not in body:
                model = self.config.model or await self._model_for(ep)
                if isinstance(model, LLMError):
                    return model
                body = {**body, "model": model}
            timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
            async with self._session.post(
                ep.url + wire.PATHS[kind], data=wire.encode(body), timeout=timeout
            ) as resp:
                status = resp.status
                raw = await resp.read()
                retry_after = wire.parse_retry_after(resp.headers.get("Retry-After"),
                                                     self.wall_clock())
        except asyncio.CancelledError:
            self._outcomes.abandoned(ep)
            raise
        except TimeoutError:
            return self._outcomes.failed(ep, "timeout",
                                         f"no answer within {self.config.timeout_s}s",
                                         congestion=True, health=True)
        except aiohttp.ClientError as e:
            return self._outcomes.failed(ep, "unavailable", f"{type(e).__name__}: {e}",
                                         health=True)
        except Exception as e:  # never raise from chat(): translate and log
            log.exception("llm.unexpected_error", endpoint=ep.url)
            return self._outcomes.failed(ep, "unavailable", f"{type(e).__name__}: {e}",
                                         health=False)
        now = self.clock()
        return self._outcomes.answer(ep, status, raw, retry_after, now=now, latency=now - t0,
                                     model=str(body.get("model", "")), attempt=attempt)

    async def _model_for(self, ep: Endpoint) -> str | LLMError:
        """The first model the endpoint serves, fetched once per endpoint."""
        if ep.model is not None:
            return ep.model
        assert self._session is not None
        lock = self._model_locks.setdefault(ep.url, asyncio.Lock())
        async with lock:
            if ep.model is not None:
                return ep.model
            timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
            async with self._session.get(ep.url + wire.MODELS_PATH, timeout=timeout) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    kind: ErrorKind = "unavailable" if resp.status >= 500 else "bad_request"
                    return LLMError(kind=kind,
                                    message=f"GET {wire.MODELS_PATH}: HTTP {resp.status}",
                                    endpoint=ep.url, status=resp.status)
            try:
                ep.model = wire.decode_first_model(raw)
            except wire.BadResponse as e:
                return LLMError(kind="bad_response", message=str(e), endpoint=ep.url)
            return ep.model

    # -- vLLM /metrics -----------------------------------------------------------
    async def _metrics_loop(self, interval: float) -> None:
        """Poll every live endpoint's queue depth each ``interval`` until closed.

        Error handling: an endpoint that does not answer is skipped this round
        (the request path's breaker reports dead endpoints); one without vLLM's
        metric is not polled again.
        """
        while not self._stop.is_set():
            eps = [ep for ep in self._endpoints
                   if not ep.removed and ep.metrics_supported is not False]
            async with asyncio.TaskGroup() as tg:
                for ep in eps:
                    tg.create_task(self._poll_metrics(ep, interval))
            await pause(interval, self._stop)

    async def _poll_metrics(self, ep: Endpoint, interval: float) -> None:
        assert self._session is not None
        try:
            timeout = aiohttp.ClientTimeout(total=max(1.0, interval))
            async with self._session.get(ep.url + wire.METRICS_PATH, timeout=timeout) as resp:
                text = await resp.text() if resp.status == 200 else ""
        except (TimeoutError, aiohttp.ClientError):
            return
        waiting = wire.parse_waiting(text)
        if waiting is None:
            if ep.metrics_supported is None:
                log.info("llm.metrics_unsupported", endpoint=ep.url)
            ep.metrics_supported = False
            return
        ep.metrics_supported = True
        self._outcomes.queue_depth(ep, waiting)

    # -- wiring between the parts ---------------------------------------------------
    def _endpoint_added(self, ep: Endpoint) -> None:
        self._fleet.adopt(ep)

    def _endpoints_changed(self) -> None:
        self._admission.wake()
