"""Our runtime on the simulated fleet: saturation and fixed-size workloads.

The workload is a Coral-like workflow: the bundled ``coral`` agents (teacher,
student, judge), ``max_turns`` raised to 30 (ten rounds) and the simulator's
``agree_prob`` lowered to 0.3, so that the number of rounds per task is
long-tailed (about geometric with p = 0.475: half end after one round, a few
run ten). Workers are ``python -m matrix_p2p worker`` processes; the bench
process submits with ``matrix_p2p.runtime.source.submit`` (admission window =
concurrency) and reads the fleet's counters.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import yaml

from bench import harness
from bench.procs import Child, cpu_s, py, rss
from bench.simfleet import SimFleet, delta
from matrix_p2p.runtime.source import SubmitResult, submit
from matrix_p2p.runtime.topology import Names
from matrix_p2p.workflow.loader import bundled_dir, load
from matrix_p2p.workflow.spec import WorkflowSpec

MAX_TURNS = 30


def write_rows(path: Path, n: int) -> None:
    with path.open("w") as fh:
        for i in range(n):
            a, b = 7 + i % 90, 3 + (i * 7) % 50
            choices = {"A": str(a + b), "B": str(a + b + 1), "C": str(a - b), "D": str(a * b)}
            fh.write(json.dumps({"id": f"q{i}", "question": f"What is {a} + {b}?",
                                 "choices": choices, "answer": "A"}) + "\n")


def write_workflow(workdir: Path, urls: list[str], *, rows: int, concurrency: int,
                   name: str = "coralbench") -> Path:
    raw = yaml.safe_load((bundled_dir() / "coral.yaml").read_text())
    rows_path = workdir / f"{name}-rows.jsonl"
    write_rows(rows_path, rows)
    raw["name"] = name
    raw["source"] = {"path": str(rows_path), "id_field": "id"}
    raw["sink"] = {"path": str(workdir / f"{name}.jsonl")}
    raw["resources"]["llm"]["default"]["endpoints"] = urls
    for role in raw["roles"].values():
        role["concurrency"] = concurrency
        role["max_ack_pending"] = max(concurrency + 1000, 2000)
    raw["routing"]["max_turns"] = MAX_TURNS
    raw["limits"]["max_inflight"] = concurrency
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


async def _workers(path: Path, url: str, procs: int, concurrency: int) -> list[Child]:
    out = []
    for i in range(procs):
        args = py("-m", "matrix_p2p", "worker", str(path), "--role", "all",
                  "--nats", url, "--concurrency", str(concurrency), "--drain-timeout", "2")
        out.append(await Child(args, "worker.ready", f"worker-{i}").start())
    return out


async def _inflight(bus: Any, spec: WorkflowSpec) -> int:
    names = Names.of(spec)
    total = 0
    for role in spec.roles:
        st = await bus.consumer_stats(names.tasks_stream, role)
        total += st.ack_pending if st else 0
    return total


async def run_fixed(fleet: SimFleet, workdir: Path, *, tasks: int, concurrency: int, procs: int,
                    timeout: float = 600.0) -> dict[str, Any]:
    """``tasks`` tasks, at most ``concurrency`` alive; time until the last is written."""
    path = write_workflow(workdir, fleet.urls, rows=tasks, concurrency=concurrency,
                          name=f"ours{procs}p")
    spec = load(str(path))
    async with harness.broker("always") as (server, bus):
        await harness.setup_workflow(bus, spec)
        children = await _workers(path, server.url, procs, concurrency)
        try:
            cpu0 = sum(cpu_s(c.pid) for c in children)
            s0 = await fleet.stats()
            t0 = time.time()
            sub = asyncio.create_task(submit(bus, spec, window=concurrency))
            t1 = await harness.wait_results(bus, spec, tasks, timeout, period=0.2)
            await sub
            s1 = await fleet.stats()
            cpu = sum(cpu_s(c.pid) for c in children) - cpu0
        finally:
            for c in children:
                await c.stop()
        results = await harness.read_results(bus, spec, tasks)
    d = delta(s0, s1)
    rounds = [int(t.state.get("rounds", 0)) for t in results.values()]
    return {"name": f"ours_{procs}p", "tasks": tasks, "concurrency": concurrency,
            "seconds": round(t1 - t0, 2), "tasks_per_s": round(tasks / (t1 - t0), 2),
            "tokens_per_s": round(d["generated_tokens"] / (t1 - t0), 1),
            "fraction_of_capacity": round(d["generated_tokens"] / (t1 - t0)
                                          / d["capacity_tokens_per_s"], 4),
            "done": sum(1 for t in results.values() if t.status == "done"),
            "mean_rounds": round(sum(rounds) / max(1, len(rounds)), 2),
            "max_rounds": max(rounds, default=0), "worker_cpu_s": round(cpu, 2),
            "sim_cpu_s": d["sim_cpu_s"]}


async def saturation(fleet: SimFleet, workdir: Path, *, concurrency: int, warmup_s: float,
                     window_s: float) -> dict[str, Any]:
    """``concurrency`` tasks kept alive; generated tokens/s over a window, memory per task."""
    rows = concurrency * 3 + 2000
    path = write_workflow(workdir, fleet.urls, rows=rows, concurrency=concurrency,
                          name=f"sat{concurrency}")
    spec = load(str(path))
    async with harness.broker("always") as (server, bus):
        await harness.setup_workflow(bus, spec)
        (child,) = await _workers(path, server.url, 1, concurrency)
        stop = asyncio.Event()
        progress = SubmitResult()
        try:
            rss0 = rss(child.pid)
            sub = asyncio.create_task(submit(bus, spec, window=concurrency, stop=stop,
                                             progress=progress))
            t_start = time.time()
            async with asyncio.timeout(300):
                while progress.submitted < concurrency:
                    await asyncio.sleep(0.1)
            t_admitted = time.time() - t_start
            await asyncio.sleep(warmup_s)
            s0 = await fleet.stats()
            cpu0 = cpu_s(child.pid)
            peak_rss, peak_inflight = 0, 0
            end = time.time() + window_s
            while time.time() < end:
                await asyncio.sleep(min(1.0, max(0.0, end - time.time())))
                peak_rss = max(peak_rss, rss(child.pid))
                peak_inflight = max(peak_inflight, await _inflight(bus, spec))
            s1 = await fleet.stats()
            cpu = cpu_s(child.pid) - cpu0
            inflight_end = await _inflight(bus, spec)
            rss1 = rss(child.pid)
            stop.set()
            await sub
        finally:
            await child.stop()
    d = delta(s0, s1)
    d.update(concurrency=concurrency, inflight_at_end=inflight_end, peak_inflight=peak_inflight,
             rss_idle_mb=round(rss0 / 2**20, 1), rss_mb=round(rss1 / 2**20, 1),
             peak_rss_mb=round(peak_rss / 2**20, 1),
             mem_bytes_per_inflight_task=round((max(rss1, peak_rss) - rss0)
                                               / max(1, peak_inflight)),
             worker_cpu_s=round(cpu, 2), seconds_to_admit=round(t_admitted, 2))
    return d
