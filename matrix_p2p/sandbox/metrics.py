"""Prometheus metrics of one sandbox service, read from its counters at scrape time.

A registry per service (not the process-wide default) so that several
services in one process (tests, an embedded run) do not collide.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from matrix_p2p.sandbox.service import SandboxService

PREFIX = "matrix_p2p_sandbox_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _ServiceCollector(Collector):
    def __init__(self, service: SandboxService) -> None:
        self.service = service

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        svc = self.service
        slots = GaugeMetricFamily(PREFIX + "slots", "Sandboxes by state", labels=["state"])
        for state, n in svc.pool.counts().items():
            slots.add_metric([state], n)
        yield slots
        yield GaugeMetricFamily(PREFIX + "pool_size", "Sandboxes in the pool", value=svc.pool.size)
        yield GaugeMetricFamily(PREFIX + "braked", "1 while the pool refuses to hand out sandboxes",
                                value=float(svc.pool.braked()))
        yield GaugeMetricFamily(PREFIX + "sessions", "Live session processes",
                                value=svc.sessions.table.live())
        pc, ec, sc = svc.pool.counters, svc.exec_counters, svc.sessions.table.counters
        counters = [
            ("leases_granted", "Leases handed out", pc.granted),
            ("acquire_refused", "Acquires answered 503 (exhausted or braked)", pc.refused),
            ("leases_released", "Leases released by their holder", pc.released),
            ("leases_reclaimed", "Leases reclaimed after their TTL ran out", pc.reclaimed),
            ("health_checks_failed", "Health checks that failed", pc.health_failed),
            ("brakes", "Times the pool's brake engaged", pc.brakes),
            ("executions", "Commands executed", ec.executions),
            ("execution_timeouts", "Commands killed at their wall-clock timeout", ec.timeouts),
            ("execution_nonzero", "Commands that ended with a non-zero status", ec.nonzero),
            ("execution_seconds", "Wall-clock seconds spent executing", ec.seconds),
            ("session_calls", "Session calls answered", sc.calls),
            ("session_starts", "Session processes started, restarts included", sc.started),
            ("session_restarts", "Sessions started again by a call after they died", sc.restarted),
            ("session_deaths", "Session processes that died while wanted", sc.died),
            ("session_timeouts", "Session calls that got no reply in time (process killed)", sc.timeouts),
        ]
        for name, doc, value in counters:
            yield CounterMetricFamily(PREFIX + name, doc, value=value)


def registry_for(service: SandboxService) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ServiceCollector(service))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
