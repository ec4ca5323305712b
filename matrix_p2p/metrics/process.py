"""A process's metrics for its lifetime: ``async with serving(port, host, what) as metrics``.

``port`` None (no ``--metrics-port``): ``NullMetrics``, nothing served. ``0``: a
free port, logged (``metrics.serving`` with the URL) so that a test or an
operator can find it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog

from matrix_p2p.metrics.http import serve
from matrix_p2p.metrics.registry import Metrics, NullMetrics, Recorder

log = structlog.get_logger(__name__)


@contextlib.asynccontextmanager
async def serving(port: int | None, host: str = "127.0.0.1", *, what: str) -> AsyncIterator[Recorder]:
    """The process's ``Recorder``, served on ``host:port`` until the block ends."""
    if port is None:
        yield NullMetrics()
        return
    metrics = Metrics()
    server, real_port = serve(metrics.registry, port=port, host=host)
    log.info("metrics.serving", process=what, url=server.url, port=real_port)
    try:
        yield metrics
    finally:
        await asyncio.to_thread(server.close)
