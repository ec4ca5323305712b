"""``Metrics``: every matrix_p2p metric on one registry of its own; ``NullMetrics`` when off.

Each process (or each worker in a test) owns one ``Metrics``; nothing goes
to prometheus_client's global registry, so several in one process never
collide. Hot paths take a bound recorder once (``role(name)``,
``llm(endpoint)``) and call it per event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from matrix_p2p.aio import pause
from matrix_p2p.errors import MatrixError
from matrix_p2p.metrics.hops import HopCollector, RoleMetrics

log = structlog.get_logger(__name__)

LLM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TASK_STATUSES = ("done", "failed")


class ConsumerCounts(Protocol):
    """What ``Bus.consumer_stats`` returns, as far as metrics care."""

    @property
    def pending(self) -> int: ...

    @property
    def redelivered(self) -> int: ...


ReadConsumers = Callable[[], Awaitable[Mapping[str, ConsumerCounts | None]]]


class LLMEndpointMetrics:
    """What the LLM client records per endpoint. Get it once per endpoint and keep it."""

    __slots__ = ("_by_code", "_limit", "_requests", "_seconds", "endpoint")

    def __init__(self, endpoint: str, requests: Counter, seconds: Histogram, limit: Gauge) -> None:
        self.endpoint = endpoint
        self._requests = requests
        self._by_code: dict[str, Counter] = {}
        self._seconds = seconds.labels(endpoint)
        self._limit = limit.labels(endpoint)

    def request_done(self, seconds: float, code: int | str) -> None:
        """One request ended: ``code`` is the HTTP status, or an error kind
        without one ("timeout", "connect_error")."""
        key = str(code)
        child = self._by_code.get(key)
        if child is None:
            child = self._by_code[key] = self._requests.labels(self.endpoint, key)
        child.inc()
        self._seconds.observe(seconds)

    def set_limit(self, limit: float) -> None:
        """The adaptive concurrency limit now in force for this endpoint."""
        self._limit.set(limit)


class Metrics:
    """The process's metrics. See the package docstring for who calls what."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._roles: dict[str, RoleMetrics] = {}
        self._dead_letters: dict[str, int] = {}
        r.register(HopCollector(self._roles, self._dead_letters))
        self._llm_requests = Counter("matrix_p2p_llm_requests", "LLM requests, by endpoint and result code.",
                                     ["endpoint", "code"], registry=r)
        self._llm_seconds = Histogram("matrix_p2p_llm_request_seconds", "LLM request latency, by endpoint.",
                                      ["endpoint"], buckets=LLM_BUCKETS, registry=r)
        self._llm_limit = Gauge("matrix_p2p_llm_endpoint_limit",
                                "Adaptive concurrency limit of an LLM endpoint.", ["endpoint"], registry=r)
        self._llm: dict[str, LLMEndpointMetrics] = {}
        self._finished = Counter("matrix_p2p_tasks_finished", "Tasks that reached a final status.",
                                 ["status"], registry=r)
        for status in TASK_STATUSES:
            self._finished.labels(status)  # zero from the start, so rate() has a first point
        self._pending = Gauge("matrix_p2p_consumer_pending",
                              "Messages waiting for a role's consumer.", ["role"], registry=r)
        self._redelivered = Gauge("matrix_p2p_consumer_redelivered",
                                  "Messages of a role's consumer delivered more than once.", ["role"],
                                  registry=r)
        self._rows = Counter("matrix_p2p_sink_rows_written", "Rows the sink wrote.", registry=r)
        self._submitted = Counter("matrix_p2p_source_tasks_submitted", "Tasks the source submitted.",
                                  registry=r)
        self._heals = Counter("matrix_p2p_liveness_heals",
                              "Stored messages a consumer would not deliver, re-run or parked "
                              "by the liveness check, by consumer owner (role or sink).",
                              ["role", "action"], registry=r)

    # -------------------------------------------------------------- hot paths
    def role(self, name: str) -> RoleMetrics:
        """The role's recorder (created on first use, all outcomes at zero)."""
        rm = self._roles.get(name)
        if rm is None:
            rm = self._roles[name] = RoleMetrics(name)
            for action in ("rerun", "park"):  # zero from the start: the dashboard's series exist
                self._heals.labels(name, action)
        return rm

    def llm(self, endpoint: str) -> LLMEndpointMetrics:
        """The endpoint's recorder (created on first use)."""
        em = self._llm.get(endpoint)
        if em is None:
            em = self._llm[endpoint] = LLMEndpointMetrics(
                endpoint, self._llm_requests, self._llm_seconds, self._llm_limit)
        return em

    def attempt(self, endpoint: str, seconds: float, code: int | str, limit: int) -> None:
        """The LLM client's recorder (``llm.outcomes.AttemptRecorder``): one attempt."""
        em = self.llm(endpoint)
        em.request_done(seconds, code)
        em.set_limit(limit)

    def tokens(self, role: str, prompt: int, completion: int) -> None:
        """The LLM client's recorder: one completion's usage, for ``role``."""
        self.role(role).tokens(prompt, completion)

    # -------------------------------------------------------------- per event
    def task_finished(self, status: str) -> None:
        """A final result reached the sink (``done`` or ``failed``)."""
        self._finished.labels(status).inc()

    def dead_lettered(self, consumer: str) -> None:
        """A message dead-lettered outside a role's hop (the sink's own consumer).
        A role's hop counts itself through ``hop_done(..., "dead_lettered")``."""
        self._dead_letters[consumer] = self._dead_letters.get(consumer, 0) + 1

    def sink_rows_written(self, n: int = 1) -> None:
        self._rows.inc(n)

    def liveness_healed(self, role: str, action: str) -> None:
        """The liveness check re-ran (``rerun``) or dead-lettered (``park``) a stored
        message the consumer of ``role`` would not deliver (``liveness``)."""
        self._heals.labels(role, action).inc()

    def tasks_submitted(self, n: int = 1) -> None:
        self._submitted.inc(n)

    def set_consumer(self, role: str, pending: int, redelivered: int) -> None:
        self._pending.labels(role).set(pending)
        self._redelivered.labels(role).set(redelivered)

    async def poll_consumers(self, read: ReadConsumers, stop: asyncio.Event, *,
                             interval_s: float = 15.0,
                             wait: Callable[[float, asyncio.Event], Awaitable[bool]] = pause) -> None:
        """Refresh the consumer gauges from ``read()`` every ``interval_s`` until ``stop``.

        ``read`` maps role -> counts (None: the consumer does not exist yet),
        e.g. ``bus.consumer_stats(names.tasks_stream, role)`` for each served role.

        Error handling: a ``MatrixError`` (``BusError``) or timeout is logged
        once per streak, the gauges keep their last values, and the next
        round tries again; anything else propagates to the owning TaskGroup.
        """
        failing = False
        while not stop.is_set():
            try:
                counts = await read()
            except (MatrixError, TimeoutError) as exc:
                if not failing:
                    log.warning("metrics.consumer_poll_failed", error=str(exc))
                failing = True
            else:
                failing = False
                for role, c in counts.items():
                    if c is not None:
                        self.set_consumer(role, c.pending, c.redelivered)
            if await wait(interval_s, stop):
                return

    # -------------------------------------------------------------- export
    def render(self) -> bytes:
        """The exposition text a scrape would get."""
        return generate_latest(self.registry)


class _NullRole(RoleMetrics):
    __slots__ = ()

    def hop_started(self) -> None:
        pass

    def hop_done(self, seconds: float, outcome: str) -> None:
        pass

    def tokens(self, prompt: int, completion: int) -> None:
        pass


class _NullLLM:
    __slots__ = ()

    def request_done(self, seconds: float, code: int | str) -> None:
        pass

    def set_limit(self, limit: float) -> None:
        pass


class NullMetrics:
    """The same calls as ``Metrics``, recording nothing (``--metrics-port`` not given)."""

    _role = _NullRole("-")
    _llm = _NullLLM()

    def role(self, name: str) -> RoleMetrics:
        return self._role

    def llm(self, endpoint: str) -> _NullLLM:
        return self._llm

    def attempt(self, endpoint: str, seconds: float, code: int | str, limit: int) -> None:
        pass

    def tokens(self, role: str, prompt: int, completion: int) -> None:
        pass

    def task_finished(self, status: str) -> None:
        pass

    def dead_lettered(self, consumer: str) -> None:
        pass

    def sink_rows_written(self, n: int = 1) -> None:
        pass

    def liveness_healed(self, role: str, action: str) -> None:
        pass

    def tasks_submitted(self, n: int = 1) -> None:
        pass

    def set_consumer(self, role: str, pending: int, redelivered: int) -> None:
        pass

    async def poll_consumers(self, read: ReadConsumers, stop: asyncio.Event, *,
                             interval_s: float = 15.0,
                             wait: Callable[[float, asyncio.Event], Awaitable[bool]] = pause) -> None:
        return  # nothing would read the gauges: do not load the broker with consumer info calls

    def render(self) -> bytes:
        return b""


class LLMRecorder(Protocol):
    def request_done(self, seconds: float, code: int | str) -> None: ...

    def set_limit(self, limit: float) -> None: ...


class Recorder(Protocol):
    """What callers type against: ``Metrics`` or ``NullMetrics``."""

    def role(self, name: str) -> RoleMetrics: ...

    def llm(self, endpoint: str) -> LLMRecorder: ...

    def attempt(self, endpoint: str, seconds: float, code: int | str, limit: int) -> None: ...

    def tokens(self, role: str, prompt: int, completion: int) -> None: ...

    def task_finished(self, status: str) -> None: ...

    def dead_lettered(self, consumer: str) -> None: ...

    def sink_rows_written(self, n: int = 1) -> None: ...

    def liveness_healed(self, role: str, action: str) -> None: ...

    def tasks_submitted(self, n: int = 1) -> None: ...

    def set_consumer(self, role: str, pending: int, redelivered: int) -> None: ...

    async def poll_consumers(self, read: ReadConsumers, stop: asyncio.Event, *,
                             interval_s: float = 15.0,
                             wait: Callable[[float, asyncio.Event], Awaitable[bool]] = pause) -> None: ...

    def render(self) -> bytes: ...


def _conforms(real: Metrics, null: NullMetrics) -> tuple[Recorder, Recorder]:
    return real, null  # mypy checks that both satisfy the protocol
