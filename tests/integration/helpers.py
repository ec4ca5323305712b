"""Run a workflow in-process against the test broker: workers, source and sink."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from matrix_p2p.bus import Bus
from matrix_p2p.resources.base import Resources
from matrix_p2p.runtime.serve import serve_roles
from matrix_p2p.runtime.sink import Sink
from matrix_p2p.runtime.source import SubmitResult, submit
from matrix_p2p.runtime.worker import WorkerStats
from matrix_p2p.workflow.spec import WorkflowSpec


async def run_until(bus: Bus, spec: WorkflowSpec, out: Path, expect: int, *,
                    deadline_s: float = 60.0, llm_for: dict[str, Any] | None = None,
                    submit_rows: bool = True, concurrency: int | None = None,
                    resources: Resources | None = None, fan_out: bool = False,
                    ) -> tuple[Sink, WorkerStats, SubmitResult]:
    """Serve, submit, and sink until ``expect`` tasks are written (``fan_out``: and every
    child their parents announced)."""
    stop = asyncio.Event()
    stats = WorkerStats()
    sink = Sink(bus, spec, out)
    sub = SubmitResult()
    async with asyncio.timeout(deadline_s), asyncio.TaskGroup() as tg:
        workers = tg.create_task(serve_roles(bus, spec, list(spec.roles), llm_for=llm_for or {},
                                             stop=stop, stats=stats, concurrency=concurrency,
                                             resources=resources))
        if submit_rows:
            sub = await submit(bus, spec)
        if fan_out:
            stop_sink = asyncio.Event()

            async def watch() -> None:
                while not sink.finished(expect):
                    sink.changed.clear()
                    await sink.changed.wait()
                stop_sink.set()

            tg.create_task(watch())
            await sink.run(stop_sink)
        else:
            await sink.run(asyncio.Event(), expect=expect)
        stop.set()
        await workers
    return sink, stats, sub


def read_rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
