"""The rig of the fault tests: one bus under test, workers that crash or go on, resumes.

``crash_then_resume`` and ``fail_then_go_on`` are the two shapes of every hop fault
test (``tests/integration/test_hop_faults.py``, ``tests/integration/test_guards.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from matrix_p2p import envelope
from matrix_p2p.bus import Bus, MemoryBus
from matrix_p2p.envelope import Task
from matrix_p2p.runtime.serve import serve_roles
from matrix_p2p.runtime.source import submit
from matrix_p2p.runtime.topology import Names
from matrix_p2p.runtime.worker import WorkerStats
from matrix_p2p.workflow.spec import WorkflowSpec
from tests.conftest import make_spec
from tests.faults import Fault, FaultyBus, Step, until_crash
from tests.invariants import assert_no_task_lost, wait_finished

TWO_ROLES = """
source: {path: rows.jsonl}
roles:
  a: {agent: "tests.fault_agents:Gate", llm: null, concurrency: 10}
  b: {agent: "tests.fault_agents:Gate", llm: null, concurrency: 10}
routing: {type: cycle, roles: [a, b], max_turns: 3}
limits: {ack_wait_s: 1, retry_backoff_s: 0.05, max_deliveries: 5}
"""
HOPS = 3  # a (hop 0) -> b (hop 1) -> a (hop 2) -> done (hop 3)


class Clock:
    """Wall time plus an offset the test moves (the in-memory bus's ack deadlines)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Rig:
    """One bus under test and how to let its ack_wait run out."""

    def __init__(self, bus: Bus, clock: Clock | None) -> None:
        self.bus = bus
        self.clock = clock
        self.trace: list[Step] = []

    async def expire(self, ack_wait_s: float = 1.0) -> None:
        """Unacked messages become due again (real broker: within ``ack_wait_s`` by itself)."""
        if self.clock is not None and isinstance(self.bus, MemoryBus):
            self.clock.offset += ack_wait_s + 0.01
            self.bus.wake()

    def faulty(self, *faults: Fault, ack_wait_s: float | None = None) -> FaultyBus:
        return FaultyBus(self.bus, *faults, trace=self.trace, ack_wait_s=ack_wait_s)


def serve(bus: Bus, spec: WorkflowSpec, stop: asyncio.Event | None = None) -> asyncio.Task[WorkerStats]:
    return asyncio.create_task(serve_roles(bus, spec, list(spec.roles), llm_for={},
                                           stop=stop or asyncio.Event(), drain_timeout=2.0))


@asynccontextmanager
async def worker(bus: Bus, spec: WorkflowSpec) -> AsyncIterator[None]:
    """A fresh worker for every role, stopped (drained) when the block ends."""
    stop = asyncio.Event()
    t = serve(bus, spec, stop)
    try:
        yield
    finally:
        stop.set()
        done, _ = await asyncio.wait({t}, timeout=10)
        assert done, "the worker did not stop within 10 s of its stop event"
        t.result()


async def setup(rig: Rig, tmp_path: Path, n: int = 3) -> tuple[WorkflowSpec, Names, list[str]]:
    spec = make_spec(tmp_path, TWO_ROLES, [{"n": i} for i in range(n)])
    sub = await submit(rig.bus, spec)
    assert sub.submitted == n
    names = Names.of(spec)
    ids = sorted(t.id for t in await stored(rig.bus, names.tasks_stream))
    return spec, names, ids


async def stored(bus: Bus, stream: str) -> list[Task]:
    return [envelope.decode(m.data) async for m in bus.iter_stream(stream)]


async def crash_then_resume(rig: Rig, tmp_path: Path, fault: Fault, step: str) -> list[Task]:
    """Worker 1 stops abruptly at ``fault``; worker 2 resumes; every task ends once."""
    spec, names, ids = await setup(rig, tmp_path)
    fault.task = ids[1]
    faulty = rig.faulty(fault)
    await until_crash(serve(faulty, spec), faulty)
    await assert_no_task_lost(rig.bus, names, ids, step=step, trace=rig.trace)
    await rig.expire()
    async with worker(rig.faulty(), spec):
        return await wait_finished(rig.bus, names, ids, step=step, hops=HOPS, status="done",
                                   trace=rig.trace)


async def fail_then_go_on(rig: Rig, tmp_path: Path, fault: Fault, step: str) -> list[Task]:
    """One operation fails (the broker refuses); the same worker goes on."""
    spec, names, ids = await setup(rig, tmp_path)
    fault.task = ids[1]
    faulty = rig.faulty(fault)
    async with worker(faulty, spec):
        async with asyncio.timeout(5):
            await faulty.fired.wait()
    # worker 1 drained and stopped: a quiet moment to look for a lost task
    await assert_no_task_lost(rig.bus, names, ids, step=step, trace=rig.trace)
    await rig.expire()
    async with worker(rig.faulty(), spec):
        return await wait_finished(rig.bus, names, ids, step=step, hops=HOPS, status="done",
                                   trace=rig.trace)
