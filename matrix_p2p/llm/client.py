"""The LLM fleet client: the only module that speaks HTTP to the model servers.

Data path of one call: ``_acquire`` picks an endpoint (``pool.select``) or
waits FIFO for a slot; ``_attempt`` does one HTTP request and translates the
outcome into an ``LLMResult`` plus signals for the limiter, the breaker and
the fleet; ``_call`` retries failed attempts on other endpoints with
jittered backoff. Background tasks owned by the client: the endpoints file
watcher, the vLLM ``/metrics`` poller and the fleet publisher.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import aiohttp
import msgspec
import structlog

from matrix_p2p.aio import pause
from matrix_p2p.envelope import Usage
from matrix_p2p.llm.backoff import Backoff
from matrix_p2p.llm.breaker import CircuitBreaker
from matrix_p2p.llm.config import LLMConfig
from matrix_p2p.llm.fleet import EndpointState, FleetState, remote_effect, significant_change
from matrix_p2p.llm.limiter import AIMDLimiter
from matrix_p2p.llm.pool import Endpoint, EndpointStats, StickyMap, normalise_url, select
from matrix_p2p.llm.tools import WireToolCall, from_wire
from matrix_p2p.llm.types import ErrorKind, LLMError, LLMResponse, LLMResult

log = structlog.get_logger(__name__)

CallKind = Literal["chat", "complete"]
_PATHS: dict[CallKind, str] = {"chat": "/v1/chat/completions", "complete": "/v1/completions"}
MAX_RETRY_AFTER_S = 600.0


# -- wire types (unknown fields ignored) --------------------------------------
class _Message(msgspec.Struct):
    content: str | None = None
    tool_calls: list[WireToolCall] | None = None


class _Choice(msgspec.Struct):
    message: _Message | None = None
    text: str | None = None
    finish_reason: str | None = None


class _WireUsage(msgspec.Struct):
    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0


class _Completion(msgspec.Struct):
    choices: list[_Choice]
    usage: _WireUsage | None = None
    model: str = ""


class _Model(msgspec.Struct):
    id: str


class _Models(msgspec.Struct):
    data: list[_Model]


_completion_decoder = msgspec.json.Decoder(_Completion)
_models_decoder = msgspec.json.Decoder(_Models)
_encoder = msgspec.json.Encoder()


def parse_retry_after(value: str | None, wall_now: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    try:
        secs = float(value)
    except ValueError:
        try:
            secs = email.utils.parsedate_to_datetime(value).timestamp() - wall_now
        except (TypeError, ValueError, IndexError):
            return None
    return min(MAX_RETRY_AFTER_S, max(0.0, secs))


def parse_endpoints_file(text: str) -> list[str]:
    """One URL per line; ``#`` starts a comment; blank lines ignored."""
    out: list[str] = []
    for line in text.splitlines():
        url = line.split("#", 1)[0].strip()
        if url:
            out.append(normalise_url(url))
    return out


def parse_waiting(metrics_text: str) -> int | None:
    """Sum of ``vllm:num_requests_waiting`` samples, or None when absent."""
    total: float | None = None
    for line in metrics_text.splitlines():
        if line.startswith("vllm:num_requests_waiting"):
            try:
                total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
    return None if total is None else int(total)


class _Waiter:
    __slots__ = ("fut",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.fut: asyncio.Future[None] = loop.create_future()


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
    ) -> None:
        self.config = config
        self.fleet = fleet
        self.clock = clock
        self.wall_clock = wall_clock
        self._sleep = sleep
        self._backoff = Backoff(config.backoff_base_s, config.backoff_cap_s, rng)
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._endpoints: dict[str, Endpoint] = {}
        self._sticky = StickyMap(config.sticky_capacity)
        self._waiters: deque[_Waiter] = deque()
        self._pinned_waiters: dict[str, deque[_Waiter]] = {}  # url -> sticky requests waiting
        self._usage_by_role: dict[str, Usage] = {}
        self.total_completion_tokens = 0
        self.sticky_hits = 0
        self.sticky_misses = 0
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._closed = False
        self._file_sig: tuple[int, int] | None = None
        self._endpoints_changed = asyncio.Condition()
        self._model_locks: dict[str, asyncio.Lock] = {}
        self._dirty: set[str] = set()
        self._dirty_event = asyncio.Event()
        self._published: dict[str, EndpointState] = {}
        self._published_at: dict[str, float] = {}
        self._unsubscribe: Callable[[], None] | None = None

    # -- lifecycle ------------------------------------------------------------
    async def __aenter__(self) -> LLMClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the HTTP session, load endpoints, start the background tasks."""
        cfg = self.config
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
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
            self._add_endpoint(normalise_url(url), from_config=True)
        if cfg.endpoints_file:
            self._check_endpoints_file()
        if self.fleet is not None:
            self._unsubscribe = self.fleet.subscribe(self._on_fleet_state)
            self._spawn(self._publisher_loop(), "llm-fleet-publisher")
        if cfg.endpoints_file:
            self._spawn(self._endpoints_file_loop(), "llm-endpoints-file")
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
        if self._unsubscribe is not None:
            self._unsubscribe()
        for w in [*self._waiters, *(w for q in self._pinned_waiters.values() for w in q)]:
            if not w.fut.done():
                w.fut.set_result(None)
        if self._session is not None:
            await self._session.close()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
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
        body: dict[str, Any] = {"messages": list(messages), **extra_body}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        return await self._call("chat", body, role, sticky_key, sticky_hint)

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
        """One text completion (``/v1/completions``)."""
        body: dict[str, Any] = {"prompt": prompt, **extra_body}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        return await self._call("complete", body, role, sticky_key, sticky_hint)

    def usage_by_role(self) -> dict[str, Usage]:
        return {k: Usage(prompt_tokens=v.prompt_tokens, completion_tokens=v.completion_tokens)
                for k, v in self._usage_by_role.items()}

    def usage_by_endpoint(self) -> dict[str, Usage]:
        return {url: ep.stats().usage for url, ep in self._endpoints.items()}

    def snapshot(self) -> list[EndpointStats]:
        return [ep.stats() for ep in self._endpoints.values()]

    def endpoints(self) -> list[str]:
        """URLs that take new requests (normalised, without ``/v1``)."""
        return [u for u, ep in self._endpoints.items() if not ep.removed]

    async def wait_endpoints_changed(self) -> None:
        """Return after the next change of the endpoint set (for tests and displays)."""
        async with self._endpoints_changed:
            await self._endpoints_changed.wait()

    # -- one call: retries ------------------------------------------------------
    async def _call(
        self, kind: CallKind, body: dict[str, Any], role: str, sticky_key: str | None,
        sticky_hint: str | None = None,
    ) -> LLMResult:
        if self._session is None or self._closed:
            return LLMError(kind="no_endpoints", message="client is not started or is closed")
        if sticky_key and sticky_hint and self.config.sticky and self._sticky.get(sticky_key) is None:
            self._sticky.pin(sticky_key, normalise_url(sticky_hint))
        tried: set[str] = set()
        last: LLMError | None = None
        bad_responses = 0
        attempts = 0
        pinned_url = self._sticky.get(sticky_key) if sticky_key and self.config.sticky else None
        for retry in range(self.config.max_retries + 1):
            got = await self._acquire(sticky_key, tried)
            if isinstance(got, LLMError):
                last = got
                if got.kind != "no_endpoints":
                    break  # waiting longer would exceed the caller's budget
                if retry < self.config.max_retries:
                    await self._sleep(self._backoff.delay(retry))
                continue
            ep = got
            attempts += 1
            try:
                result = await self._attempt(ep, kind, body, attempts)
            finally:
                self._release(ep)
            if isinstance(result, LLMResponse):
                self._account(ep, role, result)
                if sticky_key is not None and self.config.sticky:
                    self._sticky.pin(sticky_key, ep.url)
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
            if retry < self.config.max_retries and (stay or not self._has_untried(tried)):
                if result.retry_after_s is None:
                    await self._sleep(self._backoff.delay(retry))
        assert last is not None
        return msgspec.structs.replace(last, attempts=max(1, attempts))

    def _has_untried(self, tried: set[str]) -> bool:
        now = self.clock()
        return any(
            u not in tried and ep.admissible(now) for u, ep in self._endpoints.items()
        )

    def _account(self, ep: Endpoint, role: str, r: LLMResponse) -> None:
        u = Usage(prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens)
        self._usage_by_role[role] = self._usage_by_role.get(role, Usage()) + u
        ep.usage = ep.usage + u
        self.total_completion_tokens += r.completion_tokens

    # -- admission -------------------------------------------------------------
    async def _acquire(self, sticky_key: str | None, tried: set[str]) -> Endpoint | LLMError:
        """Pick an endpoint and count the request in, or wait FIFO for a slot."""
        cfg = self.config
        budget = cfg.queue_wait_s if cfg.queue_wait_s is not None else cfg.timeout_s
        deadline = self.clock() + budget
        pinned_url = self._sticky.get(sticky_key) if sticky_key and cfg.sticky else None
        pinned = self._endpoints.get(pinned_url) if pinned_url and pinned_url not in tried else None
        if pinned is not None and pinned_url is not None and cfg.sticky_wait_s > 0:
            until = min(deadline, self.clock() + cfg.sticky_wait_s)
            if await self._wait_pinned(pinned, until):
                self._count_sticky(pinned, pinned_url)
                return pinned
            # unhealthy, removed, or busy for too long: any endpoint (the pinned one first)
        waiter: _Waiter | None = None
        loop = asyncio.get_running_loop()
        try:
            while True:
                now = self.clock()
                if waiter is None and self._waiters:
                    waiter = _Waiter(loop)  # others wait already: no barging
                    self._waiters.append(waiter)
                if waiter is None or self._waiters[0] is waiter:
                    ep = select(self._endpoints.values(), now, sticky=pinned, exclude=tried)
                    if ep is not None:
                        if waiter is not None:
                            self._waiters.popleft()
                            waiter = None
                        ep.admit(now)
                        if pinned_url is not None:
                            self._count_sticky(ep, pinned_url)
                        self._wake_next()
                        return ep
                    verdict = self._why_blocked(now, deadline)
                    if isinstance(verdict, LLMError):
                        return verdict
                    wake_at = verdict
                    if waiter is None:
                        waiter = _Waiter(loop)
                        self._waiters.append(waiter)
                else:
                    wake_at = deadline
                if now >= deadline:
                    return LLMError(
                        kind="timeout",
                        message=f"no endpoint slot freed within {budget:.1f}s",
                    )
                if waiter.fut.done():
                    waiter.fut = loop.create_future()
                await asyncio.wait([waiter.fut], timeout=max(0.0, min(wake_at, deadline) - now))
        finally:
            if waiter is not None:
                was_head = bool(self._waiters) and self._waiters[0] is waiter
                self._waiters.remove(waiter)
                if was_head:
                    self._wake_next()

    async def _wait_pinned(self, ep: Endpoint, until: float) -> bool:
        """Sticky routing: wait (FIFO among this endpoint's sticky requests) for a
        slot on the task's endpoint while it stays healthy, at most until ``until``.
        True when the request was admitted there. Waiting out a short Retry-After
        or a full batch keeps the task's prefix cache; a stalled or ejected
        replica lets the task go (``sticky_wait_s``)."""
        queue = self._pinned_waiters.setdefault(ep.url, deque())
        waiter: _Waiter | None = None
        loop = asyncio.get_running_loop()
        try:
            while True:
                now = self.clock()
                if ep.removed or not ep.breaker.healthy or self._closed:
                    return False
                if waiter is None and queue:
                    waiter = _Waiter(loop)  # others wait already: no barging
                    queue.append(waiter)
                if waiter is None or queue[0] is waiter:
                    if ep.admissible(now):
                        if waiter is not None:
                            queue.popleft()
                            waiter = None
                        ep.admit(now)
                        self._wake_pinned(ep.url)
                        return True
                    if waiter is None:
                        waiter = _Waiter(loop)
                        queue.append(waiter)
                if now >= until:
                    return False
                change = ep.next_change(now)
                wake_at = until if change is None else min(until, change)
                if waiter.fut.done():
                    waiter.fut = loop.create_future()
                await asyncio.wait([waiter.fut], timeout=max(0.0, wake_at - now))
        finally:
            if waiter is not None:
                was_head = bool(queue) and queue[0] is waiter
                queue.remove(waiter)
                if was_head:
                    self._wake_pinned(ep.url)

    def _wake_pinned(self, url: str) -> None:
        queue = self._pinned_waiters.get(url)
        if queue:
            head = queue[0]
            if not head.fut.done():
                head.fut.set_result(None)

    def _why_blocked(self, now: float, deadline: float) -> float | LLMError:
        """Nothing is admissible: return when to look again, or the error to give up with."""
        live = [ep for ep in self._endpoints.values() if not ep.removed]
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

    def _count_sticky(self, ep: Endpoint, pinned_url: str) -> None:
        if ep.url == pinned_url:
            ep.sticky_hits += 1
            self.sticky_hits += 1
        else:
            self.sticky_misses += 1
            old = self._endpoints.get(pinned_url)
            if old is not None:
                old.sticky_misses += 1

    def _wake_next(self) -> None:
        if self._waiters:
            head = self._waiters[0]
            if not head.fut.done():
                head.fut.set_result(None)

    def _release(self, ep: Endpoint) -> None:
        ep.release()
        self._wake_pinned(ep.url)
        self._wake_next()

    # -- one HTTP attempt ------------------------------------------------------
    async def _attempt(
        self, ep: Endpoint, kind: CallKind, body: dict[str, Any], attempt: int
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
                ep.url + _PATHS[kind], data=_encoder.encode(body), timeout=timeout
            ) as resp:
                status = resp.status
                raw = await resp.read()
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), self.wall_clock())
        except asyncio.CancelledError:
            ep.breaker.on_abandoned(self.clock())
            raise
        except TimeoutError:
            return self._failed(ep, "timeout", f"no answer within {self.config.timeout_s}s",
                                congestion=True, health=True)
        except aiohttp.ClientError as e:
            return self._failed(ep, "unavailable", f"{type(e).__name__}: {e}", health=True)
        except Exception as e:  # never raise from chat(): translate and log
            log.exception("llm.unexpected_error", endpoint=ep.url)
            return self._failed(ep, "unavailable", f"{type(e).__name__}: {e}", health=False)
        now = self.clock()
        latency = now - t0
        if status == 200:
            try:
                c = _completion_decoder.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                return self._answered(ep, "bad_response", f"undecodable body: {e}", status)
            if not c.choices:
                return self._answered(ep, "bad_response", "response has no choices", status)
            ch = c.choices[0]
            text = ch.message.content if ch.message is not None else ch.text
            usage = c.usage or _WireUsage()
            resp_ = LLMResponse(
                text=text or "",
                prompt_tokens=usage.prompt_tokens or 0,
                completion_tokens=usage.completion_tokens or 0,
                endpoint=ep.url,
                model=c.model or str(body.get("model", "")),
                latency_s=latency,
                finish_reason=ch.finish_reason,
                attempts=attempt,
                tool_calls=from_wire(ch.message.tool_calls) if ch.message is not None else (),
            )
            self._succeeded(ep, now, latency, resp_.completion_tokens)
            return resp_
        snippet = raw[:200].decode("utf-8", "replace")
        if status == 429:
            ep.rejected_429 += 1
            ep.last_429_wall = self.wall_clock()
            self._congestion(ep, now, retry_after, reason="429")
            return self._answered(ep, "rate_limited", f"HTTP 429: {snippet}", status, retry_after)
        if status == 503:
            self._congestion(ep, now, retry_after, reason="503")
            return self._answered(ep, "unavailable", f"HTTP 503: {snippet}", status, retry_after)
        if status >= 500:
            return self._failed(ep, "unavailable", f"HTTP {status}: {snippet}", status=status,
                                health=True)
        if 400 <= status < 500:
            return self._answered(ep, "bad_request", f"HTTP {status}: {snippet}", status)
        return self._answered(ep, "bad_response", f"unexpected HTTP {status}", status)

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
            async with self._session.get(ep.url + "/v1/models", timeout=timeout) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    kind: ErrorKind = "unavailable" if resp.status >= 500 else "bad_request"
                    return LLMError(kind=kind, message=f"GET /v1/models: HTTP {resp.status}",
                                    endpoint=ep.url, status=resp.status)
            try:
                models = _models_decoder.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                return LLMError(kind="bad_response", message=f"GET /v1/models: {e}",
                                endpoint=ep.url)
            if not models.data:
                return LLMError(kind="bad_response", message="GET /v1/models: no models",
                                endpoint=ep.url)
            ep.model = models.data[0].id
            return ep.model

    # -- outcome bookkeeping ---------------------------------------------------
    def _count_error(self, ep: Endpoint, kind: str) -> None:
        ep.errors_by_kind[kind] = ep.errors_by_kind.get(kind, 0) + 1

    def _succeeded(self, ep: Endpoint, now: float, latency: float, tokens: int) -> None:
        ep.successes += 1
        if ep.breaker.on_success(now) == "recovered":
            log.info("llm.endpoint_recovered", endpoint=ep.url)
        before = ep.limiter.limit
        if ep.limiter.on_success(now, latency, ep.inflight, max(1, tokens)):
            log.info("llm.limit_decreased", endpoint=ep.url, reason="latency",
                     limit=ep.limiter.limit, previous=before)
        self._maybe_publish(ep)

    def _answered(
        self, ep: Endpoint, kind: ErrorKind, message: str, status: int,
        retry_after: float | None = None,
    ) -> LLMError:
        """The server is up but did not give us a completion."""
        self._count_error(ep, kind)
        if ep.breaker.on_answered(self.clock()) == "recovered":
            log.info("llm.endpoint_recovered", endpoint=ep.url)
            self._maybe_publish(ep)
        return LLMError(kind=kind, message=message, endpoint=ep.url, status=status,
                        retry_after_s=retry_after)

    def _failed(
        self, ep: Endpoint, kind: ErrorKind, message: str, *, status: int | None = None,
        congestion: bool = False, health: bool,
    ) -> LLMError:
        """Connection error, timeout or 5xx: the breaker's business."""
        self._count_error(ep, kind)
        now = self.clock()
        if congestion:
            self._congestion(ep, now, None, reason=kind)
        if health and ep.breaker.on_failure(now) == "ejected":
            log.warning("llm.endpoint_ejected", endpoint=ep.url, error=kind, detail=message,
                        cooldown_s=ep.breaker.cooldown_s)
            self._maybe_publish(ep)
        return LLMError(kind=kind, message=message, endpoint=ep.url, status=status)

    def _congestion(self, ep: Endpoint, now: float, retry_after: float | None, reason: str) -> None:
        before_limit, before_block = ep.limiter.limit, ep.limiter.blocked_until
        if ep.limiter.on_congestion(now, retry_after):
            log.info("llm.limit_decreased", endpoint=ep.url, reason=reason,
                     limit=ep.limiter.limit, previous=before_limit)
        if ep.limiter.blocked_until > before_block + 0.5:
            log.info("llm.endpoint_backoff", endpoint=ep.url, reason=reason,
                     retry_after_s=retry_after)
        self._maybe_publish(ep, force=reason == "429" or retry_after is not None)

    # -- endpoints ----------------------------------------------------------
    def _add_endpoint(
        self, url: str, *, from_config: bool = False, from_file: bool = False
    ) -> None:
        cfg = self.config
        ep = self._endpoints.get(url)
        if ep is None:
            limiter = AIMDLimiter(
                cfg.initial_limit, cfg.min_limit, cfg.max_limit,
                decrease_factor=cfg.decrease_factor, latency_tolerance=cfg.latency_tolerance,
            )
            ep = Endpoint(url=url, limiter=limiter,
                          breaker=CircuitBreaker(cfg.breaker_failures, cfg.breaker_cooldown_s))
            self._endpoints[url] = ep
            if self.fleet is not None:
                remote = self.fleet.latest().get(url)
                if remote is not None and remote.worker != self.worker_id:
                    ep.limiter.adopt(remote.limit)
                    # The learned limit already reflects that worker's last 429.
                    ep.seen_remote_429 = remote.last_429_at
                    self._apply_remote(ep, remote)
            log.info("llm.endpoint_added", endpoint=url, limit=ep.limiter.limit)
        elif ep.removed:
            ep.removed = False
            log.info("llm.endpoint_added", endpoint=url, limit=ep.limiter.limit)
        ep.from_config = ep.from_config or from_config
        ep.from_file = ep.from_file or from_file

    def _set_file_endpoints(self, urls: list[str]) -> None:
        wanted = set(urls)
        for url in urls:
            self._add_endpoint(url, from_file=True)
        for url, ep in self._endpoints.items():
            if ep.from_file and url not in wanted:
                ep.from_file = False
                if not ep.from_config and not ep.removed:
                    ep.removed = True
                    log.info("llm.endpoint_removed", endpoint=url, inflight=ep.inflight)
        self._wake_next()

    def _check_endpoints_file(self) -> bool:
        """Re-read the endpoints file if it changed. True when it was re-read."""
        assert self.config.endpoints_file is not None
        path = Path(self.config.endpoints_file)
        try:
            st = path.stat()
            sig = (st.st_mtime_ns, st.st_size)
            if sig == self._file_sig:
                return False
            text = path.read_text()
        except OSError as e:
            if self._file_sig != (-1, -1):
                log.warning("llm.endpoints_file_unreadable", path=str(path), error=str(e))
                self._file_sig = (-1, -1)
            return False
        self._file_sig = sig
        self._set_file_endpoints(parse_endpoints_file(text))
        return True

    async def _endpoints_file_loop(self) -> None:
        while not self._stop.is_set():
            if await pause(self.config.endpoints_poll_s, self._stop):
                return
            if self._check_endpoints_file():
                async with self._endpoints_changed:
                    self._endpoints_changed.notify_all()

    # -- vLLM /metrics -----------------------------------------------------------
    async def _metrics_loop(self, interval: float) -> None:
        while not self._stop.is_set():
            eps = [ep for ep in self._endpoints.values()
                   if not ep.removed and ep.metrics_supported is not False]
            async with asyncio.TaskGroup() as tg:
                for ep in eps:
                    tg.create_task(self._poll_metrics(ep, interval))
            await pause(interval, self._stop)

    async def _poll_metrics(self, ep: Endpoint, interval: float) -> None:
        assert self._session is not None
        try:
            timeout = aiohttp.ClientTimeout(total=max(1.0, interval))
            async with self._session.get(ep.url + "/metrics", timeout=timeout) as resp:
                text = await resp.text() if resp.status == 200 else ""
        except (TimeoutError, aiohttp.ClientError):
            return  # the request path's breaker reports dead endpoints
        waiting = parse_waiting(text)
        if waiting is None:
            if ep.metrics_supported is None:
                log.info("llm.metrics_unsupported", endpoint=ep.url)
            ep.metrics_supported = False
            return
        ep.metrics_supported = True
        before = ep.limiter.limit
        if ep.limiter.on_queue_depth(self.clock(), waiting):
            log.info("llm.limit_decreased", endpoint=ep.url, reason="queue", waiting=waiting,
                     limit=ep.limiter.limit, previous=before)
            self._maybe_publish(ep)

    # -- fleet ----------------------------------------------------------------
    def _state_of(self, ep: Endpoint) -> EndpointState:
        now, wall = self.clock(), self.wall_clock()
        blocked = ep.limiter.blocked_until
        return EndpointState(
            limit=ep.limiter.limit,
            healthy=ep.breaker.healthy,
            retry_after_until=wall + (blocked - now) if blocked > now else 0.0,
            last_429_at=ep.last_429_wall,
            updated_at=wall,
            worker=self.worker_id,
        )

    def _maybe_publish(self, ep: Endpoint, force: bool = False) -> None:
        if self.fleet is None:
            return
        if force or significant_change(self._published.get(ep.url), self._state_of(ep)):
            self._dirty.add(ep.url)
            self._dirty_event.set()

    async def _publisher_loop(self) -> None:
        assert self.fleet is not None
        interval = self.config.fleet_publish_interval_s
        while not self._stop.is_set():
            await self._dirty_event.wait()
            self._dirty_event.clear()
            now = self.clock()
            later: list[float] = []
            for url in list(self._dirty):
                ep = self._endpoints.get(url)
                if ep is None:
                    self._dirty.discard(url)
                    continue
                due = self._published_at.get(url, -float("inf")) + interval
                if due > now:
                    later.append(due)
                    continue
                self._dirty.discard(url)
                state = self._state_of(ep)
                try:
                    await self.fleet.publish(url, state)
                except Exception as e:  # a broker hiccup must not stop publishing
                    log.warning("llm.fleet_publish_failed", endpoint=url, error=str(e))
                    self._dirty.add(url)
                    later.append(now + interval)
                    continue
                self._published[url] = state
                self._published_at[url] = now
            if later:
                await pause(min(later) - now, self._stop)
                self._dirty_event.set()

    def _on_fleet_state(self, url: str, state: EndpointState) -> None:
        if state.worker == self.worker_id:
            return
        ep = self._endpoints.get(url)
        if ep is not None:
            self._apply_remote(ep, state)

    def _apply_remote(self, ep: Endpoint, state: EndpointState) -> None:
        now = self.clock()
        eff = remote_effect(state, now=now, wall_now=self.wall_clock(),
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
