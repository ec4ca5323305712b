"""The tau workflow (tool use, tools executed in sandboxes) against a batch-barrier
baseline, on the same simulated LLM fleet and the same sandbox pool; and one tool
call's round trip through a sandbox session against a process per call (``calls``).

- ``ours``: ``run_workflow`` (embedded broker, workers for every role, the sink),
  ``concurrency`` tasks alive at once, each hop routed as soon as it finishes.
- ``step_barrier``: the same agents, router and sandbox pool with no broker:
  tasks in batches of ``concurrency``; every *step* (one agent hop: a user turn,
  or an assistant turn with its tool calls) of every live trajectory in the
  batch runs together, and the next step starts when the slowest is done; the
  next batch starts when the batch's last trajectory ends. This is the
  baseline of the paper's tool-use comparison (each turn batched, waiting for
  the slowest).

Both run in this process against a sandbox server in this process (pool =
concurrency, real bwrap) and the simulator fleet in its own process. Reported:
generated tokens/s (server side), sandbox utilisation: ``busy`` = execution
seconds / (pool x wall time), ``leased`` = mean fraction of the pool leased
(sampled every 0.25 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml
from matrix_p2p_agents.tau import sandbox_env

from bench.baselines import Steps, _client, make_tasks
from bench.simfleet import SimFleet, delta, wait_idle
from matrix_p2p.envelope import Task
from matrix_p2p.resources.sandbox import open_sandboxes
from matrix_p2p.runtime.local_run import RunOptions, run_workflow
from matrix_p2p.sandbox import Lease, Limits, SandboxClient, SandboxConfig, SandboxServer
from matrix_p2p.workflow.loader import bundled_dir, load
from matrix_p2p.workflow.spec import WorkflowSpec

TAU_TASKS = 65  # bundled tasks; rows cycle over them


def write_workflow(workdir: Path, name: str, urls: list[str], sandbox_url: str, *,
                   rows: int, concurrency: int) -> Path:
    raw = yaml.safe_load((bundled_dir() / "tau.yaml").read_text())
    rows_path = workdir / f"{name}-rows.jsonl"
    rows_path.write_text("".join(json.dumps({"key": f"r{i}", "id": f"retail_{i % TAU_TASKS:03d}"})
                                 + "\n" for i in range(rows)))
    raw["name"] = name
    raw["source"] = {"path": str(rows_path), "id_field": "key"}
    raw["sink"] = {"path": str(workdir / f"{name}.jsonl")}
    raw["resources"]["llm"]["default"]["endpoints"] = urls
    raw["resources"]["sandbox"]["env"]["urls"] = [sandbox_url]
    for role in raw["roles"].values():
        role["concurrency"] = concurrency
        role["max_ack_pending"] = max(concurrency + 1000, 2000)
    raw.setdefault("limits", {})["max_inflight"] = concurrency
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class Utilisation:
    """Samples the pool's leased fraction; reads execution seconds at the ends."""

    def __init__(self, srv: SandboxServer) -> None:
        self.srv = srv
        self.samples: list[float] = []

    def _status(self) -> dict[str, Any]:
        st: dict[str, Any] = self.srv.service.status()
        return st

    @contextlib.asynccontextmanager
    async def measure(self, out: dict[str, Any]) -> AsyncIterator[None]:
        st0, t0 = self._status(), time.monotonic()
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                st = self._status()
                self.samples.append(st["leased"] / st["pool_size"])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.25)

        sampler = asyncio.create_task(sample())
        try:
            yield
        finally:
            stop.set()
            await sampler
        st1, wall = self._status(), time.monotonic() - t0
        out["sandbox_busy"] = round((st1["exec_seconds"] - st0["exec_seconds"])
                                    / (st1["pool_size"] * wall), 4)
        out["sandbox_leased"] = round(sum(self.samples) / max(1, len(self.samples)), 4)
        out["executions"] = st1["executions"] - st0["executions"]
        out["leased_at_end"] = st1["leased"]
        self.samples = []


async def step_barrier(spec: WorkflowSpec, tasks: list[Task], batch: int) -> list[Task]:
    """Every step of every live trajectory in the batch together; wait for the slowest."""
    out: list[Task] = []
    async with _client(spec) as llm, open_sandboxes(spec) as resources:
        steps = Steps(spec, llm, resources)

        async def one(t: Task) -> Task:
            if t.status != "running":
                return t
            nxt = await steps.step(t)
            if nxt.status != "running" and nxt.leases:
                await resources.release_all(nxt.leases, task=nxt.id)
            return nxt

        for i in range(0, len(tasks), batch):
            live = tasks[i:i + batch]
            while any(t.status == "running" for t in live):
                live = list(await asyncio.gather(*(one(t) for t in live)))
            out += live
    return out


def _read_rows(path: Path) -> list[dict[str, Any]]:
    return [{"status": r["status"], **r["result"]}
            for r in map(json.loads, path.read_text().splitlines())]


def _summary(name: str, n: int, secs: float, d: dict[str, Any], rows: list[dict[str, Any]],
             util: dict[str, Any]) -> dict[str, Any]:
    rewards = [float(r.get("reward", 0.0)) for r in rows]
    return {"name": name, "tasks": n, "seconds": round(secs, 2),
            "tokens_per_s": round(d["generated_tokens"] / secs, 1),
            "fraction_of_capacity": d["fraction_of_capacity"],
            "done": sum(1 for r in rows if r.get("status") == "done"),
            "mean_reward": round(sum(rewards) / max(1, len(rewards)), 3),
            "mean_steps": round(sum(int(r.get("steps", 0)) for r in rows) / max(1, len(rows)), 1),
            **util}


async def run(sim: SimFleet, workdir: Path, *, tasks: int, concurrency: int,
              log: Any) -> dict[str, Any]:
    """Ours, then the step barrier, on one sandbox server (pool = concurrency)."""
    out: dict[str, Any] = {"tasks": tasks, "concurrency": concurrency}
    cfg = SandboxConfig(pool_size=concurrency, default_timeout_s=20, ttl_s=600)
    async with SandboxServer(cfg) as srv:
        util = Utilisation(srv)
        path = write_workflow(workdir, "taubench", sim.urls, srv.url, rows=tasks,
                              concurrency=concurrency)
        spec = load(str(path))

        u: dict[str, Any] = {}
        s0 = await sim.stats()
        async with util.measure(u):
            result = await run_workflow(spec, RunOptions(
                limit=tasks, out=str(workdir / "taubench.jsonl"), store=str(workdir / "nats"),
                sync="interval", llm_urls=sim.urls, sandbox_urls=[srv.url], progress=False,
                fleet_state=False), asyncio.Event())
        d = delta(s0, await sim.stats())
        rows = _read_rows(Path(result.out))
        out["ours"] = _summary("ours", tasks, result.elapsed_s, d, rows, u)
        log(f"  ours          {out['ours']['tokens_per_s']:>9,.0f} tok/s, "
            f"{result.elapsed_s:.1f}s, sandbox busy {u['sandbox_busy']:.3f} "
            f"leased {u['sandbox_leased']:.3f}")

        await wait_idle(sim)
        u = {}
        work = make_tasks(spec, tasks)
        s0 = await sim.stats()
        t0 = time.time()
        async with util.measure(u):
            finished = await step_barrier(spec, work, concurrency)
        secs = time.time() - t0
        d = delta(s0, await sim.stats())
        rows = [{"status": t.status, **t.state} for t in finished]
        out["step_barrier"] = _summary("step_barrier", tasks, secs, d, rows, u)
        log(f"  step_barrier  {out['step_barrier']['tokens_per_s']:>9,.0f} tok/s, "
            f"{secs:.1f}s, sandbox busy {u['sandbox_busy']:.3f} leased {u['sandbox_leased']:.3f}")
    out["ratio_tokens_per_s"] = round(out["ours"]["tokens_per_s"]
                                      / max(out["step_barrier"]["tokens_per_s"], 1e-9), 2)
    log(f"  ours / step_barrier: {out['ratio_tokens_per_s']}x tokens/s (paper, tool use with "
        f"real containers: 15.4x)")
    return out


READ = ("get_order_details", {"order_id": "#W4979131"})  # about 0.9 KB of result
WRITE_USER = "omar_lopez_9543"


def _write(i: int) -> tuple[str, dict[str, str]]:
    """A write that succeeds every time (a new address each call): saved before its reply."""
    return "modify_user_address", {"user_id": WRITE_USER, "address1": f"{i} Elm St", "address2": "",
                                   "city": "Columbus", "state": "OH", "country": "USA", "zip": "43279"}


def _dist(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 3),
            "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 3), "mean_ms": round(statistics.fmean(ms), 3)}


async def calls(*, rounds: int, reads_per_round: int = 5, log: Any) -> dict[str, Any]:
    """A tau tool call's round trip, client side (HTTP to the sandbox server in this process,
    real bwrap), side by side and interleaved so the machine's noise hits all alike: per
    round, ``reads_per_round`` session calls of a read tool, one of a write tool, one
    ``/execute`` of the same read as a process per call (``env.py call``, the way before
    sessions) and one ``/execute`` of ``true`` (the floor of a process per call)."""
    cfg = SandboxConfig(pool_size=2, default_timeout_s=20)
    async with SandboxServer(cfg) as srv, SandboxClient(srv.url) as client:
        old, new = await client.acquire("per-call"), await client.acquire("session")
        await client.execute(old, sandbox_env.argv("init"), files=sandbox_env.files())
        await client.start_session(new, sandbox_env.session_argv(), files=sandbox_env.files())
        await client.call(new, sandbox_env.PING)
        t: dict[str, list[float]] = {"session_read": [], "session_write": [], "execute_read": [],
                                     "execute_true": []}
        server_s: list[float] = []
        name, args = READ
        read_argv = sandbox_env.argv("call", name, json.dumps(args))
        for i in range(-2, rounds):  # two rounds of warm-up
            for _ in range(reads_per_round):
                t0 = time.perf_counter()
                reply = await client.call(new, sandbox_env.call(name, args))
                elapsed = time.perf_counter() - t0
                if i >= 0:
                    t["session_read"].append(elapsed)
                    server_s.append(reply.elapsed_s)
            wname, wargs = _write(i)
            t0 = time.perf_counter()
            reply = await client.call(new, sandbox_env.call(wname, wargs))
            t["session_write"].append(time.perf_counter() - t0)
            assert sandbox_env.reply_result(reply.reply).ok, reply
            t0 = time.perf_counter()
            res = await client.execute(old, read_argv)
            t["execute_read"].append(time.perf_counter() - t0)
            assert sandbox_env.parse_result(res.stdout).ok, res.stderr
            t0 = time.perf_counter()
            await client.execute(old, ["true"])
            t["execute_true"].append(time.perf_counter() - t0)
        for key in t:
            if key != "session_read":
                t[key] = t[key][2:]  # the warm-up rounds
        out: dict[str, Any] = {k: _dist(v) for k, v in t.items()}
        out["session_read_in_server"] = _dist(server_s)
        out["speedup_read"] = round(out["execute_read"]["p50_ms"] / out["session_read"]["p50_ms"], 1)
    for key, d in out.items():
        if isinstance(d, dict):
            log(f"  {key:24s} p50 {d['p50_ms']:8.3f} ms  p90 {d['p90_ms']:8.3f} ms  (n={d['n']})")
    log(f"  a read tool call: {out['speedup_read']}x faster through a session than a process per call")
    return out


def _descendants_pss() -> tuple[int, int]:
    """(processes, proportional set size in bytes) of every process descending from this one:
    the sandbox server's wrappers, bwrap and what runs inside (shared pages counted once)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, StopIteration, ValueError), open(f"/proc/{entry}/status") as f:
                parent[int(entry)] = int(next(ln for ln in f if ln.startswith("PPid:")).split()[1])
    me, count, pss = os.getpid(), 0, 0
    for pid in parent:
        p = parent.get(pid, 0)
        while p > 1 and p != me:
            p = parent.get(p, 0)
        if p != me:
            continue
        with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
            pss += sum(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("Pss:"))
            count += 1
    return count, pss


async def capacity(*, sessions: int, log: Any) -> dict[str, Any]:
    """How many tau environments live at once here, each with its own lease, sandbox and
    session, under the bundled workflow's limits (512 MiB address space and 30 s of CPU per
    process): every lease acquired and its session started (32 at a time); then every session
    answers a read and a write, all at once; the memory of everything the sandbox server runs
    is read while they all live."""
    tau = yaml.safe_load((bundled_dir() / "tau.yaml").read_text())["resources"]["sandbox"]["env"]
    limits = Limits(memory_bytes=tau["memory_mb"] << 20, cpu_s=tau["cpu_s"])
    cfg = SandboxConfig(pool_size=sessions, limits=limits, default_timeout_s=120, ttl_s=600)
    out: dict[str, Any] = {"sessions": sessions, "memory_mb_per_process": tau["memory_mb"]}
    t0 = time.monotonic()
    async with SandboxServer(cfg) as srv, SandboxClient(srv.url, acquire_timeout_s=120) as client:
        out["pool_start_s"] = round(time.monotonic() - t0, 1)
        leases = list(await asyncio.gather(*(client.acquire(f"cap{i}") for i in range(sessions))))

        burst = asyncio.Semaphore(32)  # 512 interpreters starting at once on 2 cores outlast a request

        async def setup(lease: Lease) -> None:
            async with burst:
                await client.start_session(lease, sandbox_env.session_argv(), files=sandbox_env.files())
                assert sandbox_env.reply_result((await client.call(lease, sandbox_env.PING)).reply).ok

        async def use(lease: Lease, i: int) -> float:
            t = time.perf_counter()
            for name, args in (READ, _write(i)):
                reply = await client.call(lease, sandbox_env.call(name, args))
                assert sandbox_env.reply_result(reply.reply).ok, reply
            return time.perf_counter() - t

        t1 = time.monotonic()
        await asyncio.gather(*(setup(lease) for lease in leases))
        out["all_started_s"] = round(time.monotonic() - t1, 1)
        t1 = time.monotonic()
        rounds = await asyncio.gather(*(use(lease, i) for i, lease in enumerate(leases)))
        out["all_called_s"] = round(time.monotonic() - t1, 2)
        out["call_pair"] = _dist(list(rounds))
        status = await client.status()
        out["live_sessions"] = status["sessions"]
        procs, pss = _descendants_pss()
        out["processes"] = procs
        out["pss_mb"] = round(pss / 2**20, 1)
        out["pss_mb_per_session"] = round(pss / 2**20 / sessions, 2)
        out["session_deaths"] = status["session_deaths"]
    log(f"  {out['live_sessions']} live sessions ({out['processes']} processes, "
        f"{out['pss_mb']:,.0f} MiB PSS, {out['pss_mb_per_session']} MiB each); all started in "
        f"{out['all_started_s']} s, a read and a write on every one at once in {out['all_called_s']} s")
    return out


async def trajectories(sim: SimFleet, workdir: Path, *, tasks: int, log: Any) -> dict[str, Any]:
    """``tasks`` tau trajectories at once through ``run_workflow``, each with its own sandbox
    and session (pool = tasks, the bundled workflow's limits): do they all finish, how many
    sessions live at once (sampled every 0.5 s), did any session die."""
    tau = yaml.safe_load((bundled_dir() / "tau.yaml").read_text())["resources"]["sandbox"]["env"]
    cfg = SandboxConfig(pool_size=tasks, default_timeout_s=20, ttl_s=600,
                        limits=Limits(memory_bytes=tau["memory_mb"] << 20, cpu_s=tau["cpu_s"]))
    peak = {"sessions": 0, "leased": 0}
    async with SandboxServer(cfg) as srv:
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                st = srv.service.status()
                peak["sessions"] = max(peak["sessions"], st["sessions"])
                peak["leased"] = max(peak["leased"], st["leased"])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)

        sampler = asyncio.create_task(sample())
        path = write_workflow(workdir, "taucap", sim.urls, srv.url, rows=tasks, concurrency=tasks)
        try:
            result = await run_workflow(load(str(path)), RunOptions(
                limit=tasks, out=str(workdir / "taucap.jsonl"), store=str(workdir / "nats-cap"),
                sync="interval", llm_urls=sim.urls, sandbox_urls=[srv.url], progress=False,
                fleet_state=False), asyncio.Event())
        finally:
            stop.set()
            await sampler
        st = srv.service.status()
    rows = _read_rows(Path(result.out))
    out = {"tasks": tasks, "seconds": round(result.elapsed_s, 1),
           "done": sum(1 for r in rows if r["status"] == "done"), "rows": len(rows),
           "peak_live_sessions": peak["sessions"], "peak_leased": peak["leased"],
           "session_calls": st["session_calls"], "session_deaths": st["session_deaths"],
           "session_timeouts": st["session_timeouts"], "executions": st["executions"],
           "leased_at_end": st["leased"]}
    log(f"  {out['done']}/{tasks} trajectories done in {out['seconds']} s; at most "
        f"{out['peak_live_sessions']} sessions live at once; {out['session_calls']} calls, "
        f"{out['session_deaths']} deaths, {out['leased_at_end']} leases left")
    return out
