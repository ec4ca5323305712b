"""Endpoint state and selection. Pure: no I/O, the caller passes ``now``.

``select`` returns the endpoint a request should go to, or ``None`` when none
can take it now; the client carries the decision out (admit, or wait).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

import msgspec

from matrix_p2p.envelope import Usage
from matrix_p2p.llm.breaker import CircuitBreaker
from matrix_p2p.llm.limiter import AIMDLimiter
from matrix_p2p.llm.scoring import Candidate, ReplicaLoad, choose


def normalise_url(url: str) -> str:
    """``http://h:8000/v1/`` and ``http://h:8000`` both become ``http://h:8000``."""
    u = url.strip().rstrip("/")
    if u.endswith("/v1"):
        u = u[: -len("/v1")]
    return u


class EndpointStats(msgspec.Struct, kw_only=True):
    """A snapshot of one endpoint for progress displays and test invariants."""

    url: str
    limit: int
    inflight: int
    max_inflight_seen: int
    limit_violations: int
    healthy: bool
    successes: int
    errors_by_kind: dict[str, int]
    rejected_429: int
    sticky_hits: int
    sticky_misses: int
    removed: bool = False
    breaker: str = "closed"
    usage: Usage = msgspec.field(default_factory=Usage)


@dataclass(eq=False)
class Endpoint:
    url: str  # normalised, without /v1
    limiter: AIMDLimiter
    breaker: CircuitBreaker
    inflight: int = 0
    removed: bool = False  # dropped from the endpoints file: no new requests
    max_inflight_seen: int = 0
    limit_violations: int = 0
    successes: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    rejected_429: int = 0
    sticky_hits: int = 0
    sticky_misses: int = 0
    usage: Usage = field(default_factory=Usage)
    # Client bookkeeping (not used by selection).
    from_config: bool = False
    from_file: bool = False
    model: str | None = None  # first model of /v1/models, fetched once
    last_429_wall: float = 0.0
    seen_remote_429: float = 0.0
    metrics_supported: bool | None = None  # None until the first poll
    from_registry: bool = False  # announced in the fleet's replica registry
    # What the replica's registrar published (see ``scoring``); None: nothing.
    published: ReplicaLoad | None = None
    published_at: float = 0.0  # this client's clock when it was learned
    capacity_hint: int | None = None  # the replica's max_num_seqs, when published

    def admissible(self, now: float) -> bool:
        if self.removed or self.limiter.blocked(now) or not self.breaker.can_admit(now):
            return False
        cap = 1 if self.breaker.state != "closed" else self.limiter.limit
        return self.inflight < cap

    def admit(self, now: float) -> None:
        """Count a request in. Checks the invariant the limiter exists for."""
        self.breaker.on_admit(now)
        self.inflight += 1
        if self.inflight > self.limiter.limit:
            self.limit_violations += 1
        self.max_inflight_seen = max(self.max_inflight_seen, self.inflight)

    def release(self) -> None:
        self.inflight -= 1

    def next_change(self, now: float) -> float | None:
        """When a currently blocked endpoint may become admissible by time alone."""
        if self.removed:
            return None
        t = self.limiter.blocked_until if self.limiter.blocked(now) else now
        if self.breaker.state == "open" and not self.breaker.probe_in_flight:
            t = max(t, self.breaker.reopen_at())
        elif self.breaker.state != "closed":
            return None  # a probe is in flight: its end wakes waiters
        return t if t > now else None

    def stats(self) -> EndpointStats:
        return EndpointStats(
            url=self.url,
            limit=self.limiter.limit,
            inflight=self.inflight,
            max_inflight_seen=self.max_inflight_seen,
            limit_violations=self.limit_violations,
            healthy=self.breaker.healthy,
            successes=self.successes,
            errors_by_kind=dict(self.errors_by_kind),
            rejected_429=self.rejected_429,
            sticky_hits=self.sticky_hits,
            sticky_misses=self.sticky_misses,
            removed=self.removed,
            breaker=self.breaker.state,
            usage=Usage(
                prompt_tokens=self.usage.prompt_tokens,
                completion_tokens=self.usage.completion_tokens,
            ),
        )

    def load(self) -> float:
        return self.inflight / max(1, self.limiter.limit)

    def candidate(self, now: float) -> Candidate:
        """What ``scoring`` weighs of this endpoint."""
        return Candidate(url=self.url, ours=self.inflight, limit=self.limiter.limit,
                         load=self.published, load_age_s=now - self.published_at,
                         capacity=self.capacity_hint)


def select(
    endpoints: Iterable[Endpoint],
    now: float,
    *,
    sticky: Endpoint | None = None,
    exclude: Collection[str] = (),
) -> Endpoint | None:
    """Least outstanding requests among admissible endpoints.

    The sticky endpoint wins whenever it is admissible (prefix-cache reuse).
    Endpoints in ``exclude`` (already tried by this request) are used only
    when nothing else is admissible. Ties go to the lower relative load.
    When any admissible endpoint has a published load (the replica registry),
    ``scoring.choose`` decides instead: load, our outstanding count and stickiness.
    """
    admissible = [ep for ep in endpoints if ep.admissible(now)]
    if any(ep.published is not None for ep in admissible):
        by_url = {ep.url: ep for ep in admissible}
        url = choose([ep.candidate(now) for ep in admissible],
                     sticky=sticky.url if sticky is not None else None, avoid=set(exclude))
        return None if url is None else by_url[url]
    if sticky is not None and sticky.admissible(now):
        return sticky
    best: Endpoint | None = None
    best_key: tuple[bool, int, float] | None = None
    for ep in admissible:
        key = (ep.url in exclude, ep.inflight, ep.load())
        if best_key is None or key < best_key:
            best, best_key = ep, key
    return best


class StickyMap:
    """task id -> endpoint url, bounded LRU (old tasks are forgotten)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._map: OrderedDict[str, str] = OrderedDict()

    def get(self, key: str) -> str | None:
        url = self._map.get(key)
        if url is not None:
            self._map.move_to_end(key)
        return url

    def pin(self, key: str, url: str) -> None:
        self._map[key] = url
        self._map.move_to_end(key)
        while len(self._map) > self.capacity:
            self._map.popitem(last=False)

    def __len__(self) -> int:
        return len(self._map)
