"""What one attempt's outcome means: the ``LLMResult`` the caller gets, and the
signals its endpoint takes from it. No I/O: the client passes in what the
server said.

Capacity signals (429, 503, a timeout, a standing queue) go to the limiter;
health signals (connection errors, timeouts, other 5xx) go to the breaker;
either may be worth telling the fleet (``publish``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import structlog

from matrix_p2p.llm.pool import Endpoint
from matrix_p2p.llm.types import ErrorKind, LLMError, LLMResponse, LLMResult
from matrix_p2p.llm.wire import BadResponse, decode_completion, error_reason

log = structlog.get_logger(__name__)

Publish = Callable[[Endpoint, bool], None]  # (endpoint, urgent)


class AttemptRecorder(Protocol):
    """Where attempts are counted (``matrix_p2p.metrics`` implements it; this package
    never imports prometheus). Called once per finished attempt and per LLM answer."""

    def attempt(self, endpoint: str, seconds: float, code: int | str, limit: int) -> None:
        """``code``: the HTTP status, or the error kind when there was none."""

    def tokens(self, role: str, prompt: int, completion: int) -> None: ...


class Outcomes:
    """Records outcomes on endpoints. ``publish(ep, urgent)`` is told whenever
    an endpoint's state changed in a way the fleet may care about."""

    def __init__(
        self, *, clock: Callable[[], float], wall_clock: Callable[[], float], publish: Publish,
        recorder: AttemptRecorder | None = None,
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._publish = publish
        self._recorder = recorder

    def finished(self, ep: Endpoint, result: LLMResult, seconds: float) -> None:
        """One attempt ended with ``result`` (after ``answer`` or ``failed`` gave it its
        meaning): count it by code, with its latency and the endpoint's limit now."""
        if self._recorder is not None:
            code = 200 if isinstance(result, LLMResponse) else (result.status or result.kind)
            self._recorder.attempt(ep.url, seconds, code, ep.limiter.limit)

    def tokens(self, role: str, result: LLMResponse) -> None:
        """A completion's usage, for the role that asked."""
        if self._recorder is not None:
            self._recorder.tokens(role, result.prompt_tokens, result.completion_tokens)

    def answer(
        self, ep: Endpoint, status: int, raw: bytes, retry_after: float | None, *,
        now: float, latency: float, model: str, attempt: int,
    ) -> LLMResult:
        """The server answered ``status`` with body ``raw`` at ``now``."""
        if status == 200:
            try:
                resp = decode_completion(raw, endpoint=ep.url, model=model,
                                         latency_s=latency, attempts=attempt)
            except BadResponse as e:
                return self.answered(ep, "bad_response", str(e), status)
            self._succeeded(ep, now, latency, resp.completion_tokens)
            return resp
        snippet = error_reason(raw)  # the server's reason on one line (vLLM: error.message)
        if status == 429:
            ep.rejected_429 += 1
            ep.last_429_wall = self._wall_clock()
            self._congestion(ep, now, retry_after, reason="429")
            return self.answered(ep, "rate_limited", f"HTTP 429: {snippet}", status, retry_after)
        if status == 503:
            self._congestion(ep, now, retry_after, reason="503")
            return self.answered(ep, "unavailable", f"HTTP 503: {snippet}", status, retry_after)
        if status >= 500:
            return self.failed(ep, "unavailable", f"HTTP {status}: {snippet}", status=status,
                               health=True)
        if 400 <= status < 500:
            return self.answered(ep, "bad_request", f"HTTP {status}: {snippet}", status)
        return self.answered(ep, "bad_response", f"unexpected HTTP {status}", status)

    def answered(
        self, ep: Endpoint, kind: ErrorKind, message: str, status: int,
        retry_after: float | None = None,
    ) -> LLMError:
        """The server is up but did not give us a completion."""
        self._count_error(ep, kind)
        if ep.breaker.on_answered(self._clock()) == "recovered":
            log.info("llm.endpoint_recovered", endpoint=ep.url)
            self._publish(ep, False)
        return LLMError(kind=kind, message=message, endpoint=ep.url, status=status,
                        retry_after_s=retry_after)

    def failed(
        self, ep: Endpoint, kind: ErrorKind, message: str, *, status: int | None = None,
        congestion: bool = False, health: bool,
    ) -> LLMError:
        """Connection error, timeout or 5xx: the breaker's business when ``health``
        (False for our own bugs, which say nothing about the server)."""
        self._count_error(ep, kind)
        if congestion:
            self._congestion(ep, self._clock(), None, reason=kind)
        if health and ep.breaker.on_failure(self._clock()) == "ejected":
            log.warning("llm.endpoint_ejected", endpoint=ep.url, error=kind, detail=message,
                        cooldown_s=ep.breaker.cooldown_s)
            self._publish(ep, False)
        return LLMError(kind=kind, message=message, endpoint=ep.url, status=status)

    def abandoned(self, ep: Endpoint) -> None:
        """The caller cancelled the request: no verdict on the endpoint."""
        ep.breaker.on_abandoned(self._clock())

    def queue_depth(self, ep: Endpoint, waiting: int) -> None:
        """vLLM's ``/metrics`` says ``waiting`` requests are queued on ``ep``."""
        before = ep.limiter.limit
        if ep.limiter.on_queue_depth(self._clock(), waiting):
            self._limit_decreased(ep, "queue", before, waiting=waiting)
            self._publish(ep, False)

    def _succeeded(self, ep: Endpoint, now: float, latency: float, tokens: int) -> None:
        ep.successes += 1
        if ep.breaker.on_success(now) == "recovered":
            log.info("llm.endpoint_recovered", endpoint=ep.url)
        before = ep.limiter.limit
        if ep.limiter.on_success(now, latency, ep.inflight, max(1, tokens)):
            self._limit_decreased(ep, "latency", before)
        self._publish(ep, False)

    def _congestion(
        self, ep: Endpoint, now: float, retry_after: float | None, reason: str
    ) -> None:
        before_limit, before_block = ep.limiter.limit, ep.limiter.blocked_until
        if ep.limiter.on_congestion(now, retry_after):
            self._limit_decreased(ep, reason, before_limit)
        if ep.limiter.blocked_until > before_block + 0.5:
            log.info("llm.endpoint_backoff", endpoint=ep.url, reason=reason,
                     retry_after_s=retry_after)
        # A 429 or a Retry-After is news other workers should act on at once.
        self._publish(ep, reason == "429" or retry_after is not None)

    @staticmethod
    def _limit_decreased(ep: Endpoint, reason: str, previous: int, **extra: object) -> None:
        log.info("llm.limit_decreased", endpoint=ep.url, reason=reason, **extra,
                 limit=ep.limiter.limit, previous=previous)

    @staticmethod
    def _count_error(ep: Endpoint, kind: str) -> None:
        ep.errors_by_kind[kind] = ep.errors_by_kind.get(kind, 0) + 1
