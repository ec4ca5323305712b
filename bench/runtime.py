"""Hop throughput: the raw relay and matrix_p2p's real worker on the same tasks.

Variants (each on a fresh nats-server with the same fsync setting and the
same preloaded tasks of the bundled ``dummy`` workflow: instant agents, a
200-character turn per talker hop, a geometric number of rounds):

- ``relay``: ``bench.relay`` processes (1 or 2), or in this process;
- ``runtime``: ``python -m matrix_p2p worker --role all`` processes (1 or 2),
  or ``serve_roles`` in this process.

``path="legacy"`` runs the runtime on the bus path before issue 19 (nats-py's
``js.publish`` and ``fetch``, ``bench.legacy_hop``): ``hop_ab_suite`` prints
both side by side. ``worker_cpu_us_per_hop`` = the workers' CPU / hops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

from bench import harness, legacy_hop, relay
from bench.procs import Child, cpu_s, py
from matrix_p2p.metrics import Metrics
from matrix_p2p.runtime.serve import serve_roles
from matrix_p2p.runtime.worker import WorkerStats
from matrix_p2p.workflow.loader import load

ROW_CHARS = 1000  # with the turns, the envelope is about 1-3 KB (2 KB on average)


PATHS = ("legacy", "new")  # the runtime's bus path: before / after issue 19


@contextlib.contextmanager
def _bus_path(path: str) -> Iterator[None]:
    """In this process, the runtime's bus path for the block (then the new one again)."""
    if path == "legacy":
        legacy_hop.install()
    try:
        yield
    finally:
        legacy_hop.uninstall()


async def hop_run(kind: str, procs: int, n_tasks: int, *, sync: str = "always",
                  timeout: float = 300.0, metrics: bool = False, path: str = "new"
                  ) -> dict[str, Any]:
    """One measurement. ``kind``: relay | runtime; ``procs``: 0 = in this process.
    ``metrics``: the runtime records Prometheus metrics (``--metrics-port 0``).
    ``path``: the runtime's bus path (``PATHS``)."""
    with _bus_path(path if kind == "runtime" else "new"):
        return await _hop_run(kind, procs, n_tasks, sync=sync, timeout=timeout, metrics=metrics,
                              path=path)


async def _hop_run(kind: str, procs: int, n_tasks: int, *, sync: str, timeout: float,
                   metrics: bool, path: str) -> dict[str, Any]:
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
                        main = "bench.legacy_hop" if path == "legacy" else "matrix_p2p"
                        args = py("-m", main, "worker", "dummy",
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
    worker_cpu = sum(v for p, v in cpu.items() if p != nats_pid)
    out.update(kind=kind, procs=procs, sync=sync, metrics=metrics,
               path=path if kind == "runtime" else "relay",
               worker_cpu_s=round(worker_cpu, 2), nats_cpu_s=cpu.get(nats_pid, 0.0),
               worker_cpu_us_per_hop=round(1e6 * worker_cpu / max(1, out["hops"]), 1))
    return out


async def hop_ab_suite(n_tasks: int, log: Any, rounds: int = 3,
                       syncs: tuple[str, ...] = ("interval", "always")) -> dict[str, Any]:
    """The runtime's hop before (``legacy``) and after (``new``) issue 19, side by side:
    1 worker process each, alternating legacy/new and new/legacy on fresh brokers,
    ``rounds`` runs each per sync setting; medians and the ratios new/legacy."""
    out: dict[str, Any] = {}
    for sync in syncs:
        runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PATHS}
        for i in range(rounds):
            for path in (PATHS if i % 2 == 0 else PATHS[::-1]):
                r = await hop_run("runtime", 1, n_tasks, sync=sync, path=path)
                runs[path].append(r)
                log(f"  {sync:8s} {path:6s} {r['hops_per_s']:>9,.0f} hops/s  "
                    f"worker {r['worker_cpu_us_per_hop']:>6.1f} us/hop  ({r['hops']} hops, "
                    f"{r['seconds']}s, nats cpu {r['nats_cpu_s']}s)")
        med = {p: {k: statistics.median(r[k] for r in runs[p])
                   for k in ("hops_per_s", "worker_cpu_us_per_hop", "seconds")} for p in PATHS}
        out[sync] = {
            "runs": runs, "median": med,
            "cpu_ratio_new_over_legacy": round(med["new"]["worker_cpu_us_per_hop"]
                                               / med["legacy"]["worker_cpu_us_per_hop"], 3),
            "rate_ratio_new_over_legacy": round(med["new"]["hops_per_s"]
                                                / med["legacy"]["hops_per_s"], 3),
        }
        log(f"  {sync}: worker us/hop legacy {med['legacy']['worker_cpu_us_per_hop']:.1f} | "
            f"new {med['new']['worker_cpu_us_per_hop']:.1f} "
            f"(x{out[sync]['cpu_ratio_new_over_legacy']}); hops/s legacy "
            f"{med['legacy']['hops_per_s']:,.0f} | new {med['new']['hops_per_s']:,.0f} "
            f"(x{out[sync]['rate_ratio_new_over_legacy']})")
    return out


def main() -> None:
    """``python -m bench.runtime [TASKS] [ROUNDS]``: the before/after hop comparison
    alone, with the raw relay once per sync setting for reference; JSON on stdout's
    last line."""
    import json
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3

    def log(line: str) -> None:
        print(line, flush=True)

    async def go() -> dict[str, Any]:
        res: dict[str, Any] = {"hop_ab": await hop_ab_suite(n, log, rounds)}
        for sync in ("interval", "always"):
            r = await hop_run("relay", 1, n, sync=sync)
            res[f"relay_1p_{sync}"] = r
            log(f"  relay 1p {sync:8s} {r['hops_per_s']:>9,.0f} hops/s  worker "
                f"{r['worker_cpu_us_per_hop']:>6.1f} us/hop")
        res["worker_cpu_us_per_hop"] = res["hop_ab"]["interval"]["median"]["new"][
            "worker_cpu_us_per_hop"]
        return res

    print(json.dumps(asyncio.run(go())))


if __name__ == "__main__":
    main()


async def overhead_suite(n_tasks: int, log: Any) -> dict[str, Any]:
    """Relay and runtime, side by side, interleaved so that drift hits both."""
    runs: dict[str, dict[str, Any]] = {}
    plan = [
        ("relay", 0, "always"), ("runtime", 0, "always"),
        ("relay", 1, "always"), ("runtime", 1, "always"),
        ("relay", 2, "always"), ("runtime", 2, "always"),
        ("relay", 1, "interval"), ("runtime_legacy", 1, "interval"), ("runtime", 1, "interval"),
    ]
    for kind, procs, sync in plan:
        key = f"{kind}_{'inproc' if procs == 0 else f'{procs}p'}_{sync}"
        path = "legacy" if kind.endswith("_legacy") else "new"
        r = await hop_run(kind.removesuffix("_legacy"), procs, n_tasks, sync=sync, path=path)
        runs[key] = r
        log(f"  {key:28s} {r['hops_per_s']:>9,.0f} hops/s  ({r['hops']} hops, {r['seconds']}s, "
            f"worker cpu {r['worker_cpu_s']}s = {r['worker_cpu_us_per_hop']} us/hop, "
            f"nats cpu {r['nats_cpu_s']}s)")
    old, new = runs["runtime_legacy_1p_interval"], runs["runtime_1p_interval"]
    log(f"  worker us/hop before | after issue 19 (sync: interval, 1 process): "
        f"{old['worker_cpu_us_per_hop']} | {new['worker_cpu_us_per_hop']} "
        f"(x{new['worker_cpu_us_per_hop'] / max(old['worker_cpu_us_per_hop'], 1e-9):.2f}; "
        f"one pair: `python -m bench.runtime` gives medians of several)")
    return runs


async def scaling_suite(counts: list[int], log: Any, sync: str = "interval") -> dict[str, Any]:
    """How hops/s move with the number of tasks (runtime, 1 worker process)."""
    out: dict[str, Any] = {}
    for n in counts:
        r = await hop_run("runtime", 1, n, sync=sync, timeout=900)
        out[str(n)] = r
        log(f"  runtime 1p, {n:>7} tasks: {r['hops_per_s']:>9,.0f} hops/s ({r['seconds']}s)")
    return out
