"""Hop throughput: the raw relay and matrix_p2p's real worker on the same tasks.

Variants (each on a fresh nats-server with the same fsync setting and the
same preloaded tasks of the bundled ``dummy`` workflow: instant agents, a
200-character turn per talker hop, a geometric number of rounds):

- ``relay``: ``bench.relay`` processes (1 or 2), or in this process;
- ``runtime``: ``python -m matrix_p2p worker --role all`` processes (1 or 2),
  or ``serve_roles`` in this process.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from bench import harness, relay
from bench.procs import Child, cpu_s, py
from matrix_p2p.metrics import Metrics
from matrix_p2p.runtime.serve import serve_roles
from matrix_p2p.runtime.worker import WorkerStats
from matrix_p2p.workflow.loader import load

ROW_CHARS = 1000  # with the turns, the envelope is about 1-3 KB (2 KB on average)


async def hop_run(kind: str, procs: int, n_tasks: int, *, sync: str = "always",
                  timeout: float = 300.0, metrics: bool = False) -> dict[str, Any]:
    """One measurement. ``kind``: relay | runtime; ``procs``: 0 = in this process.
    ``metrics``: the runtime records Prometheus metrics (``--metrics-port 0``)."""
    spec = load("dummy")
    entry = spec.entry_role()
    async with harness.broker(sync) as (server, bus):
        await harness.setup_workflow(bus, spec)
        await harness.pause(bus, spec, entry)
        await harness.preload(bus, spec, harness.make_tasks(spec, n_tasks, ROW_CHARS))
        stop = asyncio.Event()
        children: list[Child] = []
        inproc: asyncio.Task[Any] | None = None
        try:
            if procs == 0:
                ready = asyncio.Event()
                if kind == "relay":
                    inproc = asyncio.create_task(relay.serve(server.url, stop, ready))
                else:
                    inproc = asyncio.create_task(serve_roles(
                        bus, spec, list(spec.roles), llm_for={}, stop=stop, stats=WorkerStats(),
                        ready=ready, drain_timeout=5.0,
                        metrics=Metrics() if metrics else None))
                async with asyncio.timeout(30):
                    await ready.wait()
            else:
                for i in range(procs):
                    if kind == "relay":
                        args = py("-m", "bench.relay", "--url", server.url)
                        marker = "relay.ready"
                    else:
                        args = py("-m", "matrix_p2p", "worker", "dummy",
                                  "--role", "all", "--nats", server.url, "--drain-timeout", "5",
                                  *(["--metrics-port", "0"] if metrics else []))
                        marker = "worker.ready"
                    children.append(await Child(args, marker, f"{kind}-{i}").start())
            nats_pid = server.pid or -1
            pids = [c.pid for c in children] or [os.getpid()]
            pids.append(nats_pid)
            cpu0 = {p: cpu_s(p) for p in pids}
            t0 = time.time()
            await harness.resume(bus, spec, entry)
            await harness.wait_results(bus, spec, n_tasks, timeout)
            cpu = {p: round(cpu_s(p) - cpu0[p], 2) for p in pids}
        finally:
            stop.set()
            for c in children:
                await c.stop()
            if inproc is not None:
                await inproc
        results = await harness.read_results(bus, spec, n_tasks)
    out = harness.hop_summary(results, t0)
    out.update(kind=kind, procs=procs, sync=sync, metrics=metrics,
               worker_cpu_s=round(sum(v for p, v in cpu.items() if p != nats_pid), 2),
               nats_cpu_s=cpu.get(nats_pid, 0.0))
    return out


async def overhead_suite(n_tasks: int, log: Any) -> dict[str, Any]:
    """Relay and runtime, side by side, interleaved so that drift hits both."""
    runs: dict[str, dict[str, Any]] = {}
    plan = [
        ("relay", 0, "always"), ("runtime", 0, "always"),
        ("relay", 1, "always"), ("runtime", 1, "always"),
        ("relay", 2, "always"), ("runtime", 2, "always"),
        ("relay", 1, "interval"), ("runtime", 1, "interval"),
    ]
    for kind, procs, sync in plan:
        key = f"{kind}_{'inproc' if procs == 0 else f'{procs}p'}_{sync}"
        r = await hop_run(kind, procs, n_tasks, sync=sync)
        runs[key] = r
        log(f"  {key:28s} {r['hops_per_s']:>9,.0f} hops/s  ({r['hops']} hops, {r['seconds']}s, "
            f"worker cpu {r['worker_cpu_s']}s, nats cpu {r['nats_cpu_s']}s)")
    return runs


async def scaling_suite(counts: list[int], log: Any, sync: str = "interval") -> dict[str, Any]:
    """How hops/s move with the number of tasks (runtime, 1 worker process)."""
    out: dict[str, Any] = {}
    for n in counts:
        r = await hop_run("runtime", 1, n, sync=sync, timeout=900)
        out[str(n)] = r
        log(f"  runtime 1p, {n:>7} tasks: {r['hops_per_s']:>9,.0f} hops/s ({r['seconds']}s)")
    return out
