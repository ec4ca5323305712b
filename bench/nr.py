"""The natural_reasoning workflow: our runtime against a Ray Data pipeline, and the
cost of large-payload offload.

``versus_ray``: the same documents (the bundled corpus), the same agents, the same
simulated fleet and the same cap on documents alive at once. Ours: a
``python -m matrix_p2p worker --role all`` process, fed by ``submit`` with an
admission window of ``concurrency``. Ray Data: one ``map_batches`` stage per
role, in pipeline order (``batch_size=concurrency``, one actor per stage, each
``__call__`` an ``asyncio.gather`` over its batch); a document a filter dropped
passes the later stages untouched. The question writer asks one question per
document in both (``questions: 1``: the row counts stay fixed). The figure is
generated tokens per second, from the simulator's own counters.

``offload_cost``: hop throughput of the bundled ``dummy`` workflow with 100 KB
documents, ``limits.offload_bytes`` 64 KB (every hop reads the document back
from the object store) against ``null`` (the document rides in every envelope).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench import harness
from bench.baselines import make_tasks, ray_child
from bench.procs import Child, cpu_s, py
from bench.simfleet import SimFleet, delta
from matrix_p2p import envelope
from matrix_p2p.agent import Agent, Context, make_agent
from matrix_p2p.envelope import Task
from matrix_p2p.errors import FailTask, RetryLater
from matrix_p2p.llm import LLMClient
from matrix_p2p.resources.llm import llm_config
from matrix_p2p.runtime import routing
from matrix_p2p.runtime.hop import advance
from matrix_p2p.runtime.offload import Offloader
from matrix_p2p.runtime.routing import Failed
from matrix_p2p.runtime.source import submit
from matrix_p2p.workflow.loader import bundled_dir, load

OFFLOAD_DOC_CHARS = 100_000


def write_workflow(workdir: Path, urls: list[str], *, concurrency: int,
                   name: str = "nrbench") -> Path:
    """natural_reasoning pointed at the simulated fleet, one question per document."""
    raw = yaml.safe_load((bundled_dir() / "natural_reasoning.yaml").read_text())
    raw["name"] = name
    raw["source"]["path"] = str(bundled_dir() / raw["source"]["path"])
    raw["sink"] = {"path": str(workdir / f"{name}.jsonl")}
    for res in raw["resources"]["llm"].values():
        res["endpoints"] = urls
    raw["roles"]["question_writer"]["options"]["questions"] = 1
    for role in raw["roles"].values():
        role["concurrency"] = concurrency
    raw["limits"]["max_inflight"] = concurrency
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _summary(name: str, docs: int, secs: float, d: dict[str, Any], **extra: Any
             ) -> dict[str, Any]:
    return {"name": name, "docs": docs, "seconds": round(secs, 2),
            "docs_per_s": round(docs / secs, 2),
            "tokens_per_s": round(d["generated_tokens"] / secs, 1),
            "fraction_of_capacity": round(d["generated_tokens"] / secs
                                          / d["capacity_tokens_per_s"], 4), **extra}


async def run_ours(fleet: SimFleet, path: Path, docs: int, concurrency: int,
                   timeout: float = 900.0) -> dict[str, Any]:
    spec = load(str(path))
    async with harness.broker("always") as (server, bus):
        await harness.setup_workflow(bus, spec)
        args = py("-m", "matrix_p2p", "worker", str(path), "--role", "all", "--nats", server.url,
                  "--drain-timeout", "2")
        child = await Child(args, "worker.ready", "nr-worker").start(timeout=120)
        try:
            cpu0 = cpu_s(child.pid)
            s0 = await fleet.stats()
            t0 = time.time()
            sub = asyncio.create_task(submit(bus, spec, limit=docs, window=concurrency))
            t1 = await harness.wait_results(bus, spec, docs, timeout, period=0.2)
            await sub
            s1 = await fleet.stats()
            cpu = cpu_s(child.pid) - cpu0
        finally:
            await child.stop()
        results = await harness.read_results(bus, spec, docs)
    kept = sum(1 for t in results.values() if t.state.get("kept") is True)
    return _summary("ours_1p", docs, t1 - t0, delta(s0, s1), kept=kept,
                    failed=sum(1 for t in results.values() if t.status == "failed"),
                    worker_cpu_s=round(cpu, 2))


# -- Ray Data: one map_batches stage per role ---------------------------------------
class RoleStage:
    """One role as a Ray Data actor: its agent, its own LLM resource, routing after it."""

    def __init__(self, path: str, role: str) -> None:
        self.spec = load(path)
        self.role = role
        self.agent: Agent = make_agent(self.spec, self.spec.roles[role])
        asyncio.run(self.agent.setup())
        self.resource = self.spec.llm_for(role)

    async def step(self, task: Task, llm: LLMClient | None) -> Task:
        if task.status != "running" or task.role != self.role:
            return task  # dropped by an earlier filter: passes through
        for attempt in range(20):
            ctx = Context(task=task, role=self.spec.roles[self.role], spec=self.spec, llm=llm,
                          resource=self.resource, log=None, now=time.time())
            try:
                await self.agent.handle(task, ctx)
                ctx.finish()
            except RetryLater as r:
                await asyncio.sleep(min(r.after_s, 0.5 * 2 ** attempt))
                continue
            except FailTask as f:
                return advance(task, Failed(reason=f.reason), now=time.time())
            decision = routing.decide(task, self.spec)
            assert not isinstance(decision, routing.Retry)
            return advance(task, decision, now=time.time())
        return advance(task, Failed(reason="retries exhausted"), now=time.time())

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        async def run() -> list[Task]:
            async with contextlib.AsyncExitStack() as stack:
                llm = None
                if self.resource is not None:
                    llm = await stack.enter_async_context(
                        LLMClient(llm_config(self.resource, [], self.spec.path)))
                return await asyncio.gather(*(self.step(envelope.decode(bytes(b)), llm)
                                              for b in batch["task"]))

        return {"task": [envelope.encode(t) for t in asyncio.run(run())]}


def _ray_main(path: str, docs: int, concurrency: int) -> None:
    import ray
    from matrix_p2p_agents.nr.router import pipeline

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    spec = load(path)
    rows = [{"task": envelope.encode(t)} for t in make_tasks(spec, docs)]
    ds: Any = ray.data.from_items(rows, override_num_blocks=max(1, docs // concurrency))
    for role in pipeline(spec):
        ds = ds.map_batches(RoleStage, fn_constructor_kwargs={"path": path, "role": role},
                            batch_size=concurrency, concurrency=1, num_cpus=0.3,
                            batch_format="numpy")
    t0 = time.time()
    out = [envelope.decode(bytes(r["task"])) for r in ds.take_all()]
    secs = time.time() - t0
    print("RAY_RESULT " + json.dumps({
        "seconds": secs, "rows": len(out), "t0": t0,
        "running": sum(1 for t in out if t.status == "running"),
        "kept": sum(1 for t in out if t.state.get("kept") is True),
        "failed": sum(1 for t in out if t.status == "failed")}), flush=True)
    ray.shutdown()


async def run_ray(fleet: SimFleet, path: Path, docs: int, concurrency: int,
                  timeout: float = 900.0) -> dict[str, Any]:
    r, d = await ray_child(fleet, "bench.nr", [str(path), str(docs), str(concurrency)],
                           name="ray-nr", timeout=timeout)
    return _summary("ray_data", docs, r["seconds"], d, kept=r["kept"], failed=r["failed"],
                    unfinished=r["running"])


def ray_available() -> bool:
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


async def versus_ray(workdir: Path, docs: int, concurrency: int, log: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"docs": docs, "concurrency": concurrency, "paper_ratio": 2.1}
    async with SimFleet(2) as fleet:
        path = write_workflow(workdir, fleet.urls, concurrency=concurrency)
        out["ours_1p"] = await run_ours(fleet, path, docs, concurrency)
        log(f"  ours_1p   {out['ours_1p']['tokens_per_s']:>9,.0f} tok/s, "
            f"{out['ours_1p']['seconds']}s, kept {out['ours_1p']['kept']}")
        if not ray_available():
            out["ray_data_skipped"] = "ray[data] not installed (pip install 'matrix_p2p[bench-ray]')"
            log(f"  ray_data  skipped: {out['ray_data_skipped']}")
            return out
        out["ray_data"] = await run_ray(fleet, path, docs, concurrency)
        log(f"  ray_data  {out['ray_data']['tokens_per_s']:>9,.0f} tok/s, "
            f"{out['ray_data']['seconds']}s, kept {out['ray_data']['kept']}")
    ratio = out["ours_1p"]["tokens_per_s"] / max(out["ray_data"]["tokens_per_s"], 1e-9)
    out["ratio"] = round(ratio, 2)
    log(f"  ours / Ray Data: {ratio:.2f}x tokens/s (the paper: 2.1x)")
    return out


# -- offload cost ------------------------------------------------------------------
def _dummy_copy(workdir: Path, offload_bytes: int | None) -> Path:
    raw = yaml.safe_load((bundled_dir() / "dummy.yaml").read_text())
    raw["name"] = "offon" if offload_bytes else "offoff"
    raw.setdefault("limits", {})["offload_bytes"] = offload_bytes
    path = workdir / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


async def offload_run(workdir: Path, offload_bytes: int | None, n_tasks: int, procs: int = 1,
                      timeout: float = 600.0) -> dict[str, Any]:
    path = _dummy_copy(workdir, offload_bytes)
    spec = load(str(path))
    entry = spec.entry_role()
    async with harness.broker("always") as (server, bus):
        await harness.setup_workflow(bus, spec)
        await harness.pause(bus, spec, entry)
        tasks = harness.make_tasks(spec, n_tasks, OFFLOAD_DOC_CHARS)
        off = Offloader(bus, spec)
        for t in tasks:  # as submit would: the first envelope already carries a reference
            await off.store(t)
        await harness.preload(bus, spec, tasks)
        args = py("-m", "matrix_p2p", "worker", str(path), "--role", "all", "--nats",
                  server.url, "--drain-timeout", "5")
        children = [await Child(args, "worker.ready", f"offload-worker-{i}").start()
                    for i in range(procs)]
        try:
            cpu0, ncpu0 = sum(cpu_s(c.pid) for c in children), cpu_s(server.pid or -1)
            t0 = time.time()
            await harness.resume(bus, spec, entry)
            await harness.wait_results(bus, spec, n_tasks, timeout)
            cpu = sum(cpu_s(c.pid) for c in children) - cpu0
            ncpu = cpu_s(server.pid or -1) - ncpu0
        finally:
            for c in children:
                await c.stop()
        results = await harness.read_results(bus, spec, n_tasks)
    r = harness.hop_summary(results, t0)
    r.update(offload_bytes=offload_bytes, doc_chars=OFFLOAD_DOC_CHARS, procs=procs,
             worker_cpu_s=round(cpu, 2), nats_cpu_s=round(ncpu, 2),
             max_envelope_bytes=max(len(envelope.encode(t)) for t in results.values()))
    return r


async def offload_cost(workdir: Path, n_tasks: int, log: Any) -> dict[str, Any]:
    """Interleaved twice, so that drift on a shared machine hits every variant. With one
    worker process most reads hit its cache (a task's hops stay in the process); with
    two, about half of them go to the object store."""
    plan = [(f"{kind}_{procs}p", threshold, procs) for procs in (1, 2)
            for kind, threshold in (("inline", None), ("offloaded", 64 * 1024))]
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in plan}
    for _ in range(2):
        for key, threshold, procs in plan:
            r = await offload_run(workdir, threshold, n_tasks, procs)
            runs[key].append(r)
            log(f"  {key:13s} {r['hops_per_s']:>7,.0f} hops/s ({r['hops']} hops, {r['seconds']}s,"
                f" worker cpu {r['worker_cpu_s']}s, nats cpu {r['nats_cpu_s']}s, largest "
                f"envelope {r['max_envelope_bytes']:,} B)")
    best = {k: max(x["hops_per_s"] for x in v) for k, v in runs.items()}
    ratios = {f"{p}p": round(best[f"offloaded_{p}p"] / max(best[f"inline_{p}p"], 1e-9), 3)
              for p in (1, 2)}
    log(f"  offloaded / inline hops/s with {OFFLOAD_DOC_CHARS // 1000} KB documents: "
        f"{ratios['1p']:.2f}x (1 worker process), {ratios['2p']:.2f}x (2)")
    return {"runs": runs, "best_hops_per_s": best, "ratio": ratios}


async def run_all(quick: bool, log: Any) -> dict[str, Any]:
    docs, conc, n_off = (600, 200, 600) if quick else (3000, 400, 2000)
    with contextlib.ExitStack() as stack:
        import tempfile

        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mx-bench-nr-")))
        log(f"[nr] natural_reasoning, {docs} documents, {conc} alive at once")
        out = {"versus_ray": await versus_ray(work, docs, conc, log)}
        log(f"[nr] offload cost: {n_off} tasks of {OFFLOAD_DOC_CHARS // 1000} KB documents")
        out["offload"] = await offload_cost(work, n_off, log)
    return out


if __name__ == "__main__":
    if sys.argv[1] == "ray":
        os.environ.setdefault("MX_LOG_LEVEL", "warning")
        _ray_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
