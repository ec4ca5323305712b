"""Prometheus metrics of a matrix_p2p process.

One ``Metrics`` per process (``NullMetrics`` when ``--metrics-port`` is not
given), served with ``serve(metrics.registry, port)``. Who records what:

- worker, per role, kept in the slot code: ``rm = metrics.role(name)``;
  ``rm.hop_started()`` when a message gets a slot, ``rm.hop_done(seconds,
  outcome)`` when it is acked, nakked, terminated or left for redelivery
  (outcome in ``OUTCOMES``), ``rm.tokens(prompt, completion)`` per LLM call;
  ``metrics.poll_consumers(read, stop)`` in its TaskGroup.
- LLM client: ``em = metrics.llm(endpoint)``; ``em.request_done(seconds,
  code)`` per request, ``em.set_limit(limit)`` when the limit moves.
- the process: ``async with serving(port, host, what=...) as metrics`` (``--metrics-port``).
- sink: ``task_finished(status)``, ``sink_rows_written(n)``,
  ``dead_lettered("sink")``; source: ``tasks_submitted(n)``.
- liveness check (workers and sinks): ``liveness_healed(role, action)``.
"""

from matrix_p2p.metrics.hops import HOP_BUCKETS, OUTCOMES, RoleMetrics
from matrix_p2p.metrics.http import MetricsServer, serve
from matrix_p2p.metrics.names import exported_names, queried_names
from matrix_p2p.metrics.process import serving
from matrix_p2p.metrics.registry import (
    ConsumerCounts,
    LLMEndpointMetrics,
    LLMRecorder,
    Metrics,
    NullMetrics,
    Recorder,
)

__all__ = [
    "HOP_BUCKETS",
    "OUTCOMES",
    "ConsumerCounts",
    "LLMEndpointMetrics",
    "LLMRecorder",
    "Metrics",
    "MetricsServer",
    "NullMetrics",
    "Recorder",
    "RoleMetrics",
    "exported_names",
    "queried_names",
    "serve",
    "serving",
]
