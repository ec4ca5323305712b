"""The hot-path counters: one object per role, plain ints, exported at scrape time.

prometheus_client's children take a lock per update: about 330 ns for a
counter and 800 ns for a histogram observation here, so a hop (outcome,
latency, in-flight up and down) would cost about 2 µs. A hop runs on the
event loop's one thread, so the counts are plain ints and a list of bucket
counts, and ``HopCollector`` turns them into metric families when Prometheus
scrapes (from the HTTP server's thread: the GIL keeps every int whole; a
scrape may see a hop's count before its sum, which the next scrape fixes).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

OUTCOMES = ("forwarded", "done", "failed", "retried", "dead_lettered", "publish_error")
# hops run from a dummy agent's microseconds to an LLM round of minutes
HOP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
               60.0, 120.0, 300.0, 600.0)
_LE = [repr(b) for b in HOP_BUCKETS] + ["+Inf"]  # "0.001", "1.0": as prometheus_client writes them


class RoleMetrics:
    """What one role records per hop. Get it once (``Metrics.role(name)``) and keep it.

    ``hop_started()`` when a fetched message gets a slot, ``hop_done(seconds,
    outcome)`` when the slot is free again, exactly once per started hop;
    ``outcome`` is one of ``OUTCOMES`` (an unknown one raises ``KeyError``).
    """

    __slots__ = ("buckets", "completion_tokens", "inflight", "outcomes", "prompt_tokens",
                 "role", "seconds_sum")

    def __init__(self, role: str) -> None:
        self.role = role
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.buckets = [0] * (len(HOP_BUCKETS) + 1)  # per bucket, not cumulative; last is +Inf
        self.seconds_sum = 0.0
        self.inflight = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def hop_started(self) -> None:
        self.inflight += 1

    def hop_done(self, seconds: float, outcome: str) -> None:
        self.outcomes[outcome] += 1  # first: a wrong outcome leaves everything untouched
        self.inflight -= 1
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le)
        self.buckets[bisect_left(HOP_BUCKETS, seconds)] += 1
        self.seconds_sum += seconds

    def tokens(self, prompt: int, completion: int) -> None:
        """Tokens of one LLM call made for this role (from the response's usage)."""
        self.prompt_tokens += prompt
        self.completion_tokens += completion


class HopCollector(Collector):
    """Exports the roles' hop counts, latency, in-flight and tokens, and dead letters."""

    def __init__(self, roles: Mapping[str, RoleMetrics], dead_letters: Mapping[str, int]) -> None:
        self._roles = roles
        self._dead_letters = dead_letters

    def describe(self) -> Iterable[Metric]:
        # the names only, so that registering does not run collect()
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        roles = list(self._roles.values())  # a role added while we scrape waits for the next one
        hops, seconds, inflight, tokens, dead = self._families()
        dead_by_consumer = dict(self._dead_letters)
        for r in roles:
            for outcome, n in list(r.outcomes.items()):
                hops.add_metric([r.role, outcome], n)
            cumulative, total = [], 0
            for le, n in zip(_LE, list(r.buckets), strict=True):
                total += n
                cumulative.append((le, float(total)))
            seconds.add_metric([r.role], cumulative, r.seconds_sum)
            inflight.add_metric([r.role], r.inflight)
            tokens.add_metric([r.role, "prompt"], r.prompt_tokens)
            tokens.add_metric([r.role, "completion"], r.completion_tokens)
            # the role's durable consumer is named after the role
            dead_by_consumer[r.role] = dead_by_consumer.get(r.role, 0) + r.outcomes["dead_lettered"]
        for consumer, n in sorted(dead_by_consumer.items()):
            dead.add_metric([consumer], n)
        yield from (hops, seconds, inflight, tokens, dead)

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, HistogramMetricFamily, GaugeMetricFamily,
                             CounterMetricFamily, CounterMetricFamily]:
        return (
            CounterMetricFamily("matrix_p2p_hops", "Hops handled, by role and outcome.",
                                labels=["role", "outcome"]),
            HistogramMetricFamily("matrix_p2p_hop_seconds",
                                  "Time from a hop's fetch to its ack or hand-back, by role.",
                                  labels=["role"]),
            GaugeMetricFamily("matrix_p2p_tasks_inflight", "Hops being handled now, by role.",
                              labels=["role"]),
            CounterMetricFamily("matrix_p2p_llm_tokens",
                                "LLM tokens used, by role and kind (prompt, completion).",
                                labels=["role", "kind"]),
            CounterMetricFamily("matrix_p2p_dead_letters",
                                "Messages dead-lettered, by consumer (a role, or the sink).",
                                labels=["consumer"]),
        )
