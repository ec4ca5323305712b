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

Both run in this process against a sandbox server in its own process
(``sandbox-server``, pool = concurrency, real bwrap: 256 sessions' requests are
not served by the event loop that runs the workers) and the simulator fleet in
its own process. Reported:
generated tokens/s (server side), sandbox utilisation: ``busy`` = execution
seconds / (pool x wall time), ``leased`` = mean fraction of the pool leased
(sampled every 0.25 s).

At scale (``bench --only tau``: 256 alive on a pool of 256) the fleet has as many
batch slots as tasks alive (``fleet_slots``): 256 tasks fill it only if almost none
of them waits on anything but the LLM. Every 0.5 s a sample reads the tasks alive
(ours: the run's own ``/metrics``, submitted minus finished; the barrier: the live
trajectories of its batch) and the fleet's generated tokens. ``fleet_busy`` =
generated tokens / (capacity x seconds) over the *steady window*: from the first
sample with every slot of the cap alive to the last one at which the source still
had tasks to submit (the ramp-up and the drain of the last tasks left out).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from matrix_p2p_agents.tau import sandbox_env

from bench.baselines import Steps, _client, make_tasks
from bench.procs import Child, py
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

    def __init__(self, status: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self._status = status
        self.samples: list[float] = []

    @contextlib.asynccontextmanager
    async def measure(self, out: dict[str, Any]) -> AsyncIterator[None]:
        st0, t0 = await self._status(), time.monotonic()
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                st = await self._status()
                self.samples.append(st["leased"] / st["pool_size"])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.25)

        sampler = asyncio.create_task(sample())
        try:
            yield
        finally:
            stop.set()
            await sampler
        st1, wall = await self._status(), time.monotonic() - t0
        out["sandbox_busy"] = round((st1["exec_seconds"] - st0["exec_seconds"])
                                    / (st1["pool_size"] * wall), 4)
        out["sandbox_leased"] = round(sum(self.samples) / max(1, len(self.samples)), 4)
        out["executions"] = st1["executions"] - st0["executions"]
        out["leased_at_end"] = st1["leased"]
        self.samples = []


@contextlib.asynccontextmanager
async def sandbox_process(*, pool: int) -> AsyncIterator[tuple[str, SandboxClient]]:
    """``python -m matrix_p2p sandbox-server`` in its own process (as the simulator is):
    256 sessions' requests are not served by the event loop that runs the workers."""
    port = _free_port()
    child = Child(py("-m", "matrix_p2p", "sandbox-server", "--port", str(port), "--pool",
                     str(pool), "--timeout", "20", "--ttl", "600"),
                  f"sandbox-server http://127.0.0.1:{port}", "sandbox-server")
    await child.start(timeout=120)
    try:
        url = f"http://127.0.0.1:{port}"
        async with SandboxClient(url) as client:
            yield url, client
    finally:
        await child.stop()


def fleet_slots(concurrency: int) -> int:
    """Batch slots per replica of the 2-replica fleet: as many in all as tasks alive."""
    return max(1, concurrency // 2)


class Samples:
    """Every 0.5 s: (time, tasks alive, tasks submitted, fleet's generated tokens, running
    and waiting requests). ``alive`` returns (alive, submitted)."""

    def __init__(self, sim: SimFleet, alive: Callable[[], Awaitable[tuple[int, int]]]) -> None:
        self.sim = sim
        self.alive = alive
        self.rows: list[tuple[float, int, int, int, int, int]] = []

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    alive, submitted = await self.alive()
                    st = await self.sim.stats()
                    self.rows.append((st["t"], alive, submitted, st["generated_tokens"],
                                      st["running"], st["waiting"]))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)

        sampler = asyncio.create_task(sample())
        try:
            yield
        finally:
            stop.set()
            await sampler

    def window(self, *, cap: int, total: int, capacity: float, slots: int) -> dict[str, Any]:
        """The steady window (see the module's docstring) and the whole run."""
        rows = self.rows
        out: dict[str, Any] = {"samples": len(rows)}

        def busy(a: tuple[float, ...], b: tuple[float, ...]) -> float:
            return round((b[3] - a[3]) / max(b[0] - a[0], 1e-9) / capacity, 4)

        if len(rows) >= 2:
            out["fleet_busy_whole_run"] = busy(rows[0], rows[-1])
            out["alive_mean_whole_run"] = round(statistics.fmean(r[1] for r in rows), 1)
        first = next((i for i, r in enumerate(rows) if r[1] >= cap), None)
        last = max((i for i, r in enumerate(rows) if r[2] < total), default=None)
        if first is None or last is None or last - first < 2:
            out["steady_window"] = None  # never full, or too short to measure
            return out
        w = rows[first:last + 1]
        out["steady_window"] = {
            "seconds": round(w[-1][0] - w[0][0], 1), "samples": len(w),
            "alive_median": int(statistics.median(r[1] for r in w)),
            "alive_mean": round(statistics.fmean(r[1] for r in w), 1),
            "alive_min": min(r[1] for r in w),
            "fleet_busy": busy(w[0], w[-1]),
            "running_mean": round(statistics.fmean(r[4] for r in w), 1),
            "batch_slots_used": round(statistics.fmean(r[4] for r in w) / slots, 4),
            "waiting_mean": round(statistics.fmean(r[5] for r in w), 1),
        }
        return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _metric_sum(text: str, name: str) -> int:
    return int(sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                   if ln.startswith(name) and not ln.startswith("#")))


def _tool_calls(path: Path) -> dict[str, Any]:
    """Tool turns' round trip as the assistant saw it (``elapsed_s``): the first of each
    trajectory (lease, files, session start) apart from the others."""
    first: list[float] = []
    rest: list[float] = []
    for row in map(json.loads, path.read_text().splitlines()):
        tools = [t["elapsed_s"] for t in row.get("dialogue", []) if t["role"] == "tool"]
        first += tools[:1]
        rest += tools[1:]
    return {"first_call": _dist(first) if first else None, "call": _dist(rest) if rest else None}


async def step_barrier(spec: WorkflowSpec, tasks: list[Task], batch: int,
                       live_now: list[int] | None = None) -> list[Task]:
    """Every step of every live trajectory in the batch together; wait for the slowest.
    ``live_now[0]`` is kept at the number of live trajectories (for sampling)."""
    out: list[Task] = []
    live_now = live_now if live_now is not None else [0]
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
            while (n := sum(1 for t in live if t.status == "running")):
                live_now[0] = n
                live = list(await asyncio.gather(*(one(t) for t in live)))
            live_now[0] = 0
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
    st = await sim.stats()
    capacity = st["capacity_tokens_per_s"]
    slots = sim.replicas * (sim.max_num_seqs or 256)
    out["fleet"] = {"replicas": sim.replicas, "batch_slots": slots,
                    "capacity_tokens_per_s": round(capacity)}
    async with sandbox_process(pool=concurrency) as (url, client), \
            aiohttp.ClientSession() as http:
        util = Utilisation(client.status)
        path = write_workflow(workdir, "taubench", sim.urls, url, rows=tasks,
                              concurrency=concurrency)
        spec = load(str(path))
        port = _free_port()

        async def alive_ours() -> tuple[int, int]:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                text = await r.text()
            sub = _metric_sum(text, "matrix_p2p_source_tasks_submitted_total")
            return sub - _metric_sum(text, "matrix_p2p_tasks_finished_total"), sub

        u: dict[str, Any] = {}
        samples = Samples(sim, alive_ours)
        s0 = await sim.stats()
        async with util.measure(u), samples.run():
            result = await run_workflow(spec, RunOptions(
                limit=tasks, out=str(workdir / "taubench.jsonl"), store=str(workdir / "nats"),
                sync="interval", llm_urls=sim.urls, sandbox_urls=[url], progress=False,
                fleet_state=False, metrics_port=port), asyncio.Event())
        d = delta(s0, await sim.stats())
        rows = _read_rows(Path(result.out))
        out["ours"] = _summary("ours", tasks, result.elapsed_s, d, rows, u)
        out["ours"] |= samples.window(cap=concurrency, total=tasks, capacity=capacity, slots=slots)
        out["ours"]["tool_calls"] = _tool_calls(Path(result.out))
        w = out["ours"]["steady_window"] or {}
        tc = out["ours"]["tool_calls"]["call"] or {}
        log(f"  ours          {out['ours']['tokens_per_s']:>9,.0f} tok/s, "
            f"{result.elapsed_s:.1f}s, {out['ours']['done']}/{tasks} done; steady window "
            f"{w.get('seconds')} s: alive median {w.get('alive_median')} (min "
            f"{w.get('alive_min')}), fleet busy {w.get('fleet_busy')}, batch slots used "
            f"{w.get('batch_slots_used')}; tool call p50 {tc.get('p50_ms')} ms; sandbox busy "
            f"{u['sandbox_busy']:.3f} leased {u['sandbox_leased']:.3f}")

        await wait_idle(sim)
        u = {}
        work = make_tasks(spec, tasks)
        live_now = [0]

        async def alive_barrier() -> tuple[int, int]:
            return live_now[0], 0

        samples = Samples(sim, alive_barrier)
        s0 = await sim.stats()
        t0 = time.time()
        async with util.measure(u), samples.run():
            finished = await step_barrier(spec, work, concurrency, live_now)
        secs = time.time() - t0
        d = delta(s0, await sim.stats())
        rows = [{"status": t.status, **t.state} for t in finished]
        out["step_barrier"] = _summary("step_barrier", tasks, secs, d, rows, u)
        out["step_barrier"] |= samples.window(cap=concurrency, total=0, capacity=capacity,
                                              slots=slots)
        log(f"  step_barrier  {out['step_barrier']['tokens_per_s']:>9,.0f} tok/s, "
            f"{secs:.1f}s, {out['step_barrier']['done']}/{tasks} done; alive mean "
            f"{out['step_barrier'].get('alive_mean_whole_run')}, fleet busy "
            f"{out['step_barrier'].get('fleet_busy_whole_run')}; sandbox busy "
            f"{u['sandbox_busy']:.3f} leased {u['sandbox_leased']:.3f}")
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
