"""The paper's baselines, on the same simulated fleet and the same Coral-like workload.

Every baseline runs the same agent code (``agents.coral``), the same routing
function (``matrix_p2p.runtime.routing.decide``, ``hop.advance``) and the same LLM client
(``matrix_p2p.llm.LLMClient``, adaptive concurrency) as our runtime, with the
same cap on tasks alive at once (``concurrency``). Only the orchestration
differs:

- ``batch_asyncio``: rows in batches of ``concurrency``; inside a batch,
  ``asyncio.gather`` over whole dialogues; the next batch starts when the
  slowest dialogue of this one ends (the barrier of a batch pipeline).
- ``ray_data``: the same barrier in Ray Data: ``map_batches`` with
  ``batch_size=concurrency`` and one actor whose ``__call__`` runs
  ``asyncio.gather`` over the batch (run in its own process, bounded in time).
- ``central``: one coordinator owns every task's state and dispatches each
  step (the whole envelope, msgpack) to worker processes over TCP, awaits the
  reply, routes, and dispatches the next step; tasks are admitted as others
  finish (no barrier). Workers are asyncio processes running the agent and
  the client, so dispatch is cheap: a strong coordinator, not a strawman.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from bench.procs import Child, cpu_s, py
from bench.simfleet import SimFleet, delta
from matrix_p2p import envelope
from matrix_p2p.agent import Agent, Context, make_agent
from matrix_p2p.envelope import Task
from matrix_p2p.errors import FailTask, RetryLater
from matrix_p2p.llm import LLMClient
from matrix_p2p.resources.base import Resources
from matrix_p2p.resources.llm import llm_config
from matrix_p2p.runtime import routing
from matrix_p2p.runtime.hop import advance
from matrix_p2p.runtime.routing import Done, Failed, Forward
from matrix_p2p.runtime.source import iter_rows, task_id
from matrix_p2p.workflow.loader import load
from matrix_p2p.workflow.spec import WorkflowSpec

_log = structlog.get_logger("bench.baseline")


def make_tasks(spec: WorkflowSpec, n: int) -> list[Task]:
    out = []
    for row in iter_rows(spec):
        if len(out) >= n:
            break
        out.append(envelope.new_task(
            task_id=task_id(row.key, 0), workflow=spec.name, workflow_version=spec.version,
            role=spec.entry_role(), row=row.data or {}, source=row.source, row_index=row.index,
            seed=spec.seed * 1_000_003 + row.index * 101))
    return out


class Steps:
    """One step of a task (an agent turn) outside any broker: agent, then routing."""

    def __init__(self, spec: WorkflowSpec, llm: LLMClient, resources: Resources | None = None
                 ) -> None:
        self.spec = spec
        self.llm = llm
        self.resources = resources
        self.agents: dict[str, Agent] = {r: make_agent(spec, spec.roles[r]) for r in spec.roles}
        self.resource = spec.llm_for(spec.entry_role())

    async def step(self, task: Task) -> Task:
        """Run ``task.role`` on the task (retrying in place) and return the next envelope."""
        role = self.spec.roles[task.role]
        for attempt in range(20):
            ctx = Context(task=task, role=role, spec=self.spec, llm=self.llm,
                          resource=self.resource, log=_log, now=time.time(),
                          resources=self.resources)
            try:
                await self.agents[task.role].handle(task, ctx)
                ctx.finish()
            except RetryLater as r:
                await asyncio.sleep(min(r.after_s, 0.5 * 2 ** attempt))
                continue
            except FailTask as f:
                return advance(task, Failed(reason=f.reason), now=time.time())
            decision = routing.decide(task, self.spec)
            assert isinstance(decision, Forward | Done | Failed)
            return advance(task, decision, now=time.time())
        return advance(task, Failed(reason="retries exhausted"), now=time.time())

    async def dialogue(self, task: Task) -> Task:
        while task.status == "running":
            task = await self.step(task)
        return task


def _client(spec: WorkflowSpec) -> LLMClient:
    res = spec.llm_for(spec.entry_role())
    assert res is not None
    return LLMClient(llm_config(res, [], spec.path))


async def batch_barrier(spec: WorkflowSpec, tasks: list[Task], batch: int) -> list[Task]:
    async with _client(spec) as llm:
        steps = Steps(spec, llm)
        out: list[Task] = []
        for i in range(0, len(tasks), batch):
            out += await asyncio.gather(*(steps.dialogue(t) for t in tasks[i:i + batch]))
        return out


def _summary(name: str, tasks: int, concurrency: int, secs: float, d: dict[str, Any],
             finished: list[Task] | None, **extra: Any) -> dict[str, Any]:
    out = {"name": name, "tasks": tasks, "concurrency": concurrency, "seconds": round(secs, 2),
           "tasks_per_s": round(tasks / secs, 2),
           "tokens_per_s": round(d["generated_tokens"] / secs, 1),
           "fraction_of_capacity": round(d["generated_tokens"] / secs
                                         / d["capacity_tokens_per_s"], 4),
           "sim_cpu_s": d["sim_cpu_s"]}
    if finished is not None:
        out["done"] = sum(1 for t in finished if t.status == "done")
        rounds = [int(t.state.get("rounds", 0)) for t in finished]
        out["mean_rounds"] = round(sum(rounds) / max(1, len(rounds)), 2)
    out.update(extra)
    return out


async def run_batch(fleet: SimFleet, path: Path, *, tasks: int, concurrency: int
                    ) -> dict[str, Any]:
    spec = load(str(path))
    work = make_tasks(spec, tasks)
    s0 = await fleet.stats()
    t0 = time.time()
    finished = await batch_barrier(spec, work, concurrency)
    secs = time.time() - t0
    return _summary("batch_asyncio", tasks, concurrency, secs, delta(s0, await fleet.stats()),
                    finished)


# -- Ray Data ------------------------------------------------------------------
def ray_available() -> bool:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def _ray_main(path: str, tasks: int, concurrency: int) -> None:
    """In its own process: Ray Data map_batches with asyncio.gather inside a batch."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    spec = load(path)
    rows = [{"task": envelope.encode(t)} for t in make_tasks(spec, tasks)]

    class Dialogues:
        def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
            async def run() -> list[Task]:
                async with _client(spec) as llm:
                    steps = Steps(spec, llm)
                    return await asyncio.gather(
                        *(steps.dialogue(envelope.decode(bytes(b))) for b in batch["task"]))

            done = asyncio.run(run())
            return {"status": [t.status for t in done],
                    "rounds": [int(t.state.get("rounds", 0)) for t in done]}

    ds = ray.data.from_items(rows, override_num_blocks=max(1, tasks // concurrency))
    t0 = time.time()
    out = ds.map_batches(Dialogues, batch_size=concurrency, concurrency=1,
                         batch_format="numpy").take_all()
    secs = time.time() - t0
    print("RAY_RESULT " + json.dumps({"seconds": secs, "rows": len(out),
                                      "done": sum(1 for r in out if r["status"] == "done"),
                                      "t0": t0}), flush=True)
    ray.shutdown()


async def ray_child(fleet: SimFleet, module: str, args: list[str], *, name: str,
                    timeout: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run a Ray Data pipeline in a child process (``python -m MODULE ray ARGS``): its
    ``RAY_RESULT`` JSON, and the fleet's figures over the ``map_batches`` call only
    (Ray's start-up excluded)."""
    s0 = await fleet.stats()
    child = Child(py("-m", module, "ray", *args), "RAY_RESULT", name)
    try:
        await child.start(timeout=timeout)
        s1 = await fleet.stats()
    finally:
        await child.stop(timeout=30)
    line = next(ln for ln in child.tail if ln.startswith("RAY_RESULT "))
    r: dict[str, Any] = json.loads(line.split(" ", 1)[1])
    return r, delta(dict(s0, t=r["t0"]), s1)


async def run_ray(fleet: SimFleet, path: Path, *, tasks: int, concurrency: int,
                  timeout: float) -> dict[str, Any]:
    r, d = await ray_child(fleet, "bench.baselines", [str(path), str(tasks), str(concurrency)],
                           name="ray", timeout=timeout)
    return _summary("ray_data", tasks, concurrency, r["seconds"], d, None, done=r["done"])


# -- central coordinator --------------------------------------------------------
_LEN = struct.Struct("!I")


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (n,) = _LEN.unpack(await reader.readexactly(4))
    return await reader.readexactly(n)


def _frame(data: bytes) -> bytes:
    return _LEN.pack(len(data)) + data


async def run_central(fleet: SimFleet, path: Path, *, tasks: int, concurrency: int,
                      workers: int = 2) -> dict[str, Any]:
    """The coordinator (this process) and ``workers`` step-executing processes."""
    spec = load(str(path))
    pending = make_tasks(spec, tasks)[::-1]
    finished: list[Task] = []
    all_done = asyncio.Event()
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    connected = asyncio.Event()
    outstanding = [0] * workers
    dispatches = 0

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conns.append((r, w))
        if len(conns) == workers:
            connected.set()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    children = [Child(py("-m", "bench.central_worker", str(port), str(path)),
                      "central.ready", f"central-{i}") for i in range(workers)]
    try:
        for c in children:
            await c.start()
        async with asyncio.timeout(30):
            await connected.wait()

        def dispatch(task: Task) -> None:
            nonlocal dispatches
            i = min(range(workers), key=outstanding.__getitem__)  # least loaded worker
            outstanding[i] += 1
            dispatches += 1
            conns[i][1].write(_frame(envelope.encode(task)))

        async def replies(i: int) -> None:
            reader = conns[i][0]
            while len(finished) < tasks:
                try:
                    task = envelope.decode(await _read_frame(reader))
                except asyncio.IncompleteReadError:
                    return
                outstanding[i] -= 1
                if task.status == "running":
                    dispatch(task)  # the coordinator routes: next step of the same task
                else:
                    finished.append(task)
                    if pending:
                        dispatch(pending.pop())
                    if len(finished) == tasks:
                        all_done.set()

        cpu0 = sum(cpu_s(c.pid) for c in children)
        s0 = await fleet.stats()
        t0 = time.time()
        for _ in range(min(concurrency, len(pending))):
            dispatch(pending.pop())
        async with asyncio.TaskGroup() as tg:
            for i in range(workers):
                tg.create_task(replies(i))
            await all_done.wait()
            for _, w in conns:
                w.close()
        secs = time.time() - t0
        s1 = await fleet.stats()
        cpu = sum(cpu_s(c.pid) for c in children) - cpu0
    finally:
        for c in children:
            await c.stop()
        server.close()
    return _summary(f"central_{workers}w", tasks, concurrency, secs, delta(s0, s1), finished,
                    dispatches=dispatches, worker_cpu_s=round(cpu, 2))


if __name__ == "__main__":
    if sys.argv[1] == "ray":
        _ray_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
