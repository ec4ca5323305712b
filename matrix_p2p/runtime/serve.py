"""One worker process: the roles it serves, their agents, and the parts they share
(the object bucket, the seen-set, the consumer poll for metrics), under one TaskGroup."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from matrix_p2p.agent import ChatClient, make_agent
from matrix_p2p.bus import Bus, ConsumerStats
from matrix_p2p.metrics import Recorder
from matrix_p2p.resources.base import Resources
from matrix_p2p.runtime import topology
from matrix_p2p.runtime.offload import Offloader
from matrix_p2p.runtime.seen import KVSeenSet
from matrix_p2p.runtime.topology import Names
from matrix_p2p.runtime.worker import RoleWorker, WorkerStats
from matrix_p2p.workflow.spec import WorkflowSpec


async def serve_roles(
    bus: Bus,
    spec: WorkflowSpec,
    roles: list[str],
    *,
    llm_for: Mapping[str, ChatClient | None],
    stop: asyncio.Event,
    concurrency: int | None = None,
    stats: WorkerStats | None = None,
    ready: asyncio.Event | None = None,
    drain_timeout: float = 30.0,
    replicas: int | None = None,
    resources: Resources | None = None,
    metrics: Recorder | None = None,
    beat: Callable[[], None] = lambda: None,
) -> WorkerStats:
    """Run the given roles in this process until ``stop``; returns the counters."""
    stats = stats or WorkerStats()
    await topology.ensure_workflow(bus, spec, roles, replicas=replicas)
    agents = {name: make_agent(spec, spec.roles[name]) for name in roles}
    for agent in agents.values():
        await agent.setup()
    readies = [asyncio.Event() for _ in roles]
    offloader = Offloader(bus, spec)  # one object bucket handle for every role
    seen = KVSeenSet(bus, spec)
    tasks_stream = Names.of(spec).tasks_stream

    async def consumers() -> dict[str, ConsumerStats | None]:
        return {name: await bus.consumer_stats(tasks_stream, name) for name in roles}

    try:
        async with asyncio.TaskGroup() as tg:
            if metrics is not None:
                tg.create_task(metrics.poll_consumers(consumers, stop))
            for name, role_ready in zip(roles, readies, strict=True):
                role = spec.roles[name]
                rw = RoleWorker(
                    bus=bus, spec=spec, role=role, agent=agents[name], llm=llm_for.get(name),
                    concurrency=concurrency or role.concurrency, stats=stats, resources=resources,
                    offloader=offloader, seen=seen, metrics=metrics, beat=beat,
                )
                tg.create_task(rw.run(stop, role_ready, drain_timeout))
            if ready is not None:
                await asyncio.gather(*(e.wait() for e in readies))
                ready.set()
    finally:
        for agent in agents.values():
            await agent.close()
    return stats
