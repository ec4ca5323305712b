"""Shared plumbing: a fresh broker per measurement, preloaded tasks, completion.

A hop-throughput run preloads every task while the entry role's consumer is
paused, starts the workers, and resumes the consumer once they are all
serving: every variant starts at the same instant, with import and connect
time left out. Hops are counted from the finished envelopes (a task's final
``hop`` is the number of hops it took) and timed from the resume to the last
``finished_at``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import AsyncIterator
from typing import Any

from matrix_p2p import bus as busmod
from matrix_p2p import envelope
from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.envelope import Task
from matrix_p2p.runtime.topology import Names, ensure_workflow, hop_msg_id
from matrix_p2p.workflow.spec import WorkflowSpec


@contextlib.asynccontextmanager
async def broker(sync: str) -> AsyncIterator[tuple[EmbeddedNats, busmod.Bus]]:
    server = EmbeddedNats(sync=sync)
    await asyncio.to_thread(server.start)
    try:
        bus = await busmod.connect(busmod.ConnectOptions(url=server.url, name="bench"))
        try:
            yield server, bus
        finally:
            await bus.close()
    finally:
        await asyncio.to_thread(server.cleanup)


def make_tasks(spec: WorkflowSpec, n: int, row_chars: int, seed0: int = 0) -> list[Task]:
    entry = spec.entry_role()
    filler = "y" * row_chars
    return [
        envelope.new_task(task_id=f"b{i}", workflow=spec.name, workflow_version=spec.version,
                          role=entry, row={"text": filler}, row_index=i, seed=seed0 + i * 101)
        for i in range(n)
    ]


async def preload(bus: busmod.Bus, spec: WorkflowSpec, tasks: list[Task], inflight: int = 512) -> None:
    """Publish the tasks to the entry role with many PubAcks in flight."""
    names = Names.of(spec)
    subject = names.task(spec.entry_role())
    sem = asyncio.Semaphore(inflight)

    async def one(t: Task) -> None:
        async with sem:
            await bus.publish(subject, envelope.encode(t), msg_id=hop_msg_id(t.id, 0))

    async with asyncio.TaskGroup() as tg:
        for t in tasks:
            tg.create_task(one(t))


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def pause(bus: busmod.Bus, spec: WorkflowSpec, role: str) -> None:
    await bus.js.pause_consumer(Names.of(spec).tasks_stream, role, _iso(time.time() + 3600))


async def resume(bus: busmod.Bus, spec: WorkflowSpec, role: str) -> None:
    await bus.js.resume_consumer(Names.of(spec).tasks_stream, role)


async def setup_workflow(bus: busmod.Bus, spec: WorkflowSpec) -> None:
    await ensure_workflow(bus, spec)


async def wait_results(bus: busmod.Bus, spec: WorkflowSpec, n: int, timeout: float,
                       period: float = 0.05) -> float:
    """Wall time when the results stream holds ``n`` messages (a monitor: it polls)."""
    names = Names.of(spec)
    async with asyncio.timeout(timeout):
        while await bus.stream_msgs(names.results_stream) < n:
            await asyncio.sleep(period)
    return time.time()


async def read_results(bus: busmod.Bus, spec: WorkflowSpec, n: int, timeout: float = 120.0
                       ) -> dict[str, Task]:
    """Every finished envelope, by task id (a republish dedup'd by id)."""
    names = Names.of(spec)
    durable = f"bench-{int(time.time() * 1000) % 10**9}"
    await bus.ensure_consumer(names.results_stream,
                              names.results_consumer(durable, max_ack_pending=1_000_000))
    puller = await bus.puller(names.results_stream, durable)
    out: dict[str, Task] = {}
    try:
        async with asyncio.timeout(timeout):
            while len(out) < n:
                for d in await puller.fetch(1024, 1.0):
                    t = envelope.decode(d.data)
                    out[t.id] = t
    finally:
        await puller.unsubscribe()
    return out


def hop_summary(results: dict[str, Task], t0: float) -> dict[str, Any]:
    """``hops_per_s`` is the steady rate: hops started until 90 % of them had started.

    The last hops belong to the few long tasks, which run one hop after the
    other: timing to the very end measures that tail's latency, not throughput
    (``hops_per_s_to_end`` keeps it for reference).
    """
    hops = sum(t.hop for t in results.values())
    t_last = max((t.finished_at or 0.0) for t in results.values())
    secs = max(t_last - t0, 1e-9)
    starts = sorted(turn.started_at for t in results.values() for turn in t.turns)
    k = int(0.9 * len(starts))
    steady = k / max(starts[k] - t0, 1e-9) if starts else 0.0
    return {"tasks": len(results), "hops": hops, "seconds": round(secs, 3),
            "hops_per_s": round(steady, 1), "hops_per_s_to_end": round(hops / secs, 1),
            "done": sum(1 for t in results.values() if t.status == "done"),
            "mean_hops_per_task": round(hops / max(1, len(results)), 2),
            "max_hops_per_task": max((t.hop for t in results.values()), default=0)}
