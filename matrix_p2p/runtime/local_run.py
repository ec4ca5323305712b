"""``run``: one machine, everything embedded, one command.

Starts a real nats-server (unless ``--nats`` is given) with a store directory
that survives the run, a vLLM-compatible simulator (unless LLM endpoints are
given), workers for every role, the source, the sink and the progress
display. Ctrl-C stops submitting, drains in-flight hops and writes what has
finished; running the same command again resumes from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import structlog

from matrix_p2p import bus as busmod
from matrix_p2p.aio import wait_any
from matrix_p2p.broker import StoreBroker
from matrix_p2p.envelope import Usage
from matrix_p2p.llm.cache import CacheStats
from matrix_p2p.llm.registry import ReplicaSource
from matrix_p2p.llm.registry import serving as registered_serving
from matrix_p2p.metrics import serving
from matrix_p2p.report.figures import FigureValue
from matrix_p2p.resources.llm import open_fleet_state, open_llms, registry_models, uses_llm
from matrix_p2p.resources.preflight import preflight
from matrix_p2p.resources.sandbox import open_sandboxes
from matrix_p2p.runset.broken import BrokenRun
from matrix_p2p.runset.completion import Counts
from matrix_p2p.runset.ended import all_ended
from matrix_p2p.runset.taskset import plan
from matrix_p2p.runtime.attempts import retry_failed
from matrix_p2p.runtime.files import OutputLock, default_out, out_format
from matrix_p2p.runtime.filter_counts import FilterCounts
from matrix_p2p.runtime.progress import Progress, Snapshot
from matrix_p2p.runtime.serve import serve_roles
from matrix_p2p.runtime.sink import Sink
from matrix_p2p.runtime.source import SubmitResult, submit
from matrix_p2p.runtime.topology import Names
from matrix_p2p.runtime.worker import WorkerStats
from matrix_p2p.workflow.spec import WorkflowSpec
from matrix_p2p.workflow.version import Mode, code_hash, resolve

log = structlog.get_logger(__name__)


class RunOptions(msgspec.Struct, kw_only=True):
    limit: int | None = None
    out: str | None = None
    nats: busmod.ConnectOptions | None = None  # None: start an embedded broker
    store: str | None = None
    sync: str = "always"
    llm_urls: list[str] = []
    sandbox_urls: list[str] = []  # empty: an in-process sandbox server if the workflow needs one
    sim_replicas: int = 1
    concurrency: int | None = None
    progress: bool = True
    drain_timeout_s: float = 30.0
    fleet_state: bool = True  # share learned LLM endpoint limits through JetStream KV
    retry_failed: bool = False  # resubmit tasks whose latest attempt failed (attempts.py)
    version_mode: Mode = "check"  # a changed workflow: refuse, "reuse" or start "new" rows
    kept_only: bool = False  # the sink writes only rows the workflow's filters kept
    metrics_port: int | None = None  # one /metrics for the whole run (0: a free port)
    metrics_host: str = "127.0.0.1"
    preflight: bool = True  # probe the LLM endpoints and sandbox servers first (preflight.py)
    cache: bool = True  # False (--no-cache): no LLM response cache, whatever the workflow says


class RunResult(msgspec.Struct):
    out: str
    rows: int  # distinct tasks in the output: this run's tasks and their children
    expected: int  # this run's tasks (rows selected times trials)
    done: int  # finished during this run (the output may hold more from earlier runs)
    failed: int
    elapsed_s: float
    completion_tokens: int
    interrupted: bool
    submit: SubmitResult
    worker: WorkerStats
    dataset_done: int = 0  # over the whole output (the latest attempt of each task)
    dataset_failed: int = 0
    retried: int = 0  # failed tasks resubmitted as a new attempt by this run
    sandbox_leased: int | None = None  # leases the in-process sandbox server held at the end
    filters: FilterCounts = msgspec.field(default_factory=FilterCounts)
    usage_by_role: dict[str, Usage] = {}  # LLM tokens this run, for the summary
    tasks: Counts = msgspec.field(default_factory=Counts)  # the output's rows, by kind
    preserved: str | None = None  # where an earlier code version's rows were moved
    file_rows: int = 0  # lines in the output file: `rows` less the tasks kept-only left out
    left_out: int = 0  # kept-only: tasks whose ids went to <out>.skipped instead of rows
    children: int = 0  # fan-out children among the output's distinct tasks (`rows`)
    figures: list[FigureValue] = []  # the workflow's `summary:` over the output's rows
    # why the run stopped early (limits.abort_on_failures, runset/broken.py); its
    # unfinished tasks stay in the store. None: it was not stopped
    aborted: str | None = None
    summary: str | None = None  # the summary file (<out>.summary.json), once written
    cache: CacheStats | None = None  # the LLM response cache's hits; None: no cache used


@contextlib.asynccontextmanager
async def _held(lock: OutputLock) -> AsyncIterator[None]:
    with lock:
        yield


@contextlib.asynccontextmanager
async def _broker(opts: RunOptions, spec: WorkflowSpec) -> AsyncIterator[busmod.ConnectOptions]:
    if opts.nats is not None:
        yield opts.nats
        return
    broker = StoreBroker(Path(opts.store or Path(".mx") / spec.name), sync=opts.sync)
    broker.lock()
    try:
        url = broker.spawn_or_adopt()  # in this thread: the broker dies with it
        if url is not None:
            log.warning("broker.adopted", url=url, store=str(broker.store_dir),
                        pid=broker.adopted.pid if broker.adopted else None,
                        detail="a broker left running by an earlier run of this store")
        else:
            assert broker.server is not None
            await asyncio.to_thread(broker.server.wait_ready)
            url = broker.server.url
            log.info("broker.started", url=url, store=str(broker.store_dir),
                     pid=broker.server.pid)
        yield busmod.ConnectOptions(url=url, name=f"mx-run-{spec.name}")
    finally:
        await asyncio.to_thread(broker.stop)


def _needs_sim(opts: RunOptions, spec: WorkflowSpec) -> bool:
    # the simulator stands in for any LLM resource a role uses that names no endpoints
    resources = [spec.llm_for(role) for role in spec.roles]
    return not opts.llm_urls and any(
        r is not None and not r.endpoints and not r.endpoints_file for r in resources
    )


def _needs_sandbox_server(opts: RunOptions, spec: WorkflowSpec) -> bool:
    # like the simulator: a sandbox server in this process when the workflow declares
    # sandbox resources and neither --sandbox-url nor the file names a server
    declared = spec.resources.sandbox.values()
    return not opts.sandbox_urls and bool(declared) and not all(r.urls for r in declared)


@contextlib.asynccontextmanager
async def _registered(opts: RunOptions, spec: WorkflowSpec,
                      conn: busmod.ConnectOptions) -> AsyncIterator[ReplicaSource | None]:
    """``run --nats`` with no endpoints: the fleet's registered replicas (``llm-register``)
    when every model the roles need has one now; else None (the simulator, as before)."""
    if opts.nats is None or not _needs_sim(opts, spec):
        yield None
        return
    models = registry_models(spec, list(spec.roles), opts.llm_urls) or []
    bus = await busmod.connect(conn)
    try:
        async with bus.replica_registry() as registry:
            if all(registered_serving(registry.entries(), m, time.time()) for m in models):
                log.info("llm.registry_used", bucket=registry.bucket,
                         endpoints=sorted({e.url for e in registry.entries()}))
                yield registry
                return
            log.info("llm.registry_empty", bucket=registry.bucket, note="starting the simulator")
        yield None
    finally:
        await bus.close()


@contextlib.asynccontextmanager
async def _llm_urls(opts: RunOptions, spec: WorkflowSpec,
                    registered: bool = False) -> AsyncIterator[list[str]]:
    if registered or not _needs_sim(opts, spec):
        yield list(opts.llm_urls)
        return
    from matrix_p2p.sim.config import SimConfig
    from matrix_p2p.sim.server import start_fleet

    servers = await start_fleet(SimConfig(seed=spec.seed), replicas=opts.sim_replicas,
                                host="127.0.0.1", base_port=0)
    try:
        yield [s.url for s in servers]
    finally:
        for s in servers:
            await s.stop()


class _SandboxServers(msgspec.Struct):
    urls: list[str]
    leased_at_end: int | None = None


@contextlib.asynccontextmanager
async def _sandbox_urls(opts: RunOptions, spec: WorkflowSpec) -> AsyncIterator[_SandboxServers]:
    declared = spec.resources.sandbox.values()
    if not _needs_sandbox_server(opts, spec):
        yield _SandboxServers(list(opts.sandbox_urls))
        return
    from matrix_p2p.sandbox import Limits, SandboxConfig, SandboxServer

    limits = Limits(memory_bytes=max(r.memory_mb for r in declared) << 20,
                    cpu_s=max(r.cpu_s for r in declared))
    config = SandboxConfig(pool_size=max(r.pool for r in declared), limits=limits,
                           ttl_s=max(r.ttl_s for r in declared),
                           default_timeout_s=max(r.timeout_s for r in declared))
    async with SandboxServer(config) as server:
        log.info("sandbox.started", url=server.url, pool=config.pool_size)
        found = _SandboxServers([server.url])
        try:
            yield found
        finally:
            found.leased_at_end = int(server.service.status()["leased"])  # type: ignore[call-overload]


async def run_workflow(spec: WorkflowSpec, opts: RunOptions, stop: asyncio.Event) -> RunResult:
    """Run ``spec`` to completion (or until ``stop``). Returns what was written.

    Error handling: configuration and connection problems raise
    ``MatrixError`` before any work starts; during the run, failed hops are
    retried by the workers and tasks that cannot finish end as failed rows.
    """
    planned = plan(spec, opts.limit)  # the run's task ids; duplicate ids: one line, now
    expected = len(planned)
    out = Path(opts.out) if opts.out else default_out(spec)
    # one writer per output: taken (and the file checked) before anything starts
    lock = OutputLock(out, out_format(out))
    digest = code_hash(spec)
    roles = list(spec.roles)
    if opts.preflight:  # not what this run starts itself: up by construction
        await preflight(spec, roles, llm_urls=opts.llm_urls, sandbox_urls=opts.sandbox_urls,
                        llm=not _needs_sim(opts, spec),
                        sandboxes=not _needs_sandbox_server(opts, spec))
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with _held(lock), _broker(opts, spec) as conn, _registered(opts, spec, conn) as reg, \
            _llm_urls(opts, spec, reg is not None) as urls, _sandbox_urls(opts, spec) as sandboxes:
        bus = await busmod.connect(conn)
        try:
            ns = await resolve(bus, Names.of(spec).submitted_bucket, spec, digest,
                               opts.version_mode)
            async with serving(opts.metrics_port, opts.metrics_host, what="run") as metrics, \
                    open_fleet_state(bus, enabled=opts.fleet_state and uses_llm(spec, roles)) as fleet, \
                    open_llms(spec, roles, urls, fleet=fleet, recorder=metrics,
                              cache_bus=bus if opts.cache else None,
                              registry=reg) as llms, \
                    open_sandboxes(spec, sandboxes.urls) as resources:
                tasks = planned.in_namespace(ns)
                sink = Sink(bus, spec, out, namespace=ns, kept_only=opts.kept_only,
                            metrics=metrics, tasks=tasks, lock=lock)
                completion = sink.completion
                assert completion is not None
                submitted_kv = await bus.key_value(Names.of(spec).submitted_bucket)
                stats = WorkerStats()
                submitted = SubmitResult()
                stop_workers = asyncio.Event()
                stop_sink = asyncio.Event()
                stop_progress = asyncio.Event()

                def snapshot() -> Snapshot:
                    return Snapshot(done=sink.done, failed=sink.failed,
                                    total=expected + completion.announced,  # + children
                                    inflight=stats.inflight, tokens=llms.completion_tokens,
                                    submitted=submitted.submitted)

                progress = Progress(snapshot)
                broken = BrokenRun.from_limit(spec.limits.abort_on_failures)
                sink.on_written = lambda task: broken.observe(task.status, task.error)
                sink_ready = asyncio.Event()
                retried: list[str] = []
                retry_ready = asyncio.Event()

                async def supervise() -> None:
                    # the run ends when the sink has every task of the run's set, on
                    # Ctrl-C, or when it is clearly broken (its unfinished tasks stay)
                    await sink_ready.wait()
                    await wait_any(retry_ready, stop)
                    for tid in retried:
                        completion.expect_attempt(tid)
                    while not stop.is_set() and broken.tripped is None:
                        sink.changed.clear()
                        if await all_ended(sink, submitted_kv):
                            break
                        await wait_any(sink.changed, stop)
                    if broken.tripped is not None and not sink.finished():
                        log.error("run.broken", reason=broken.tripped)
                    stop_workers.set()

                async def workers_then_sink() -> None:
                    await serve_roles(bus, spec, roles, llm_for=llms.by_role, stop=stop_workers,
                                      concurrency=opts.concurrency, stats=stats,
                                      drain_timeout=opts.drain_timeout_s, resources=resources,
                                      metrics=metrics)
                    stop_sink.set()  # after the drain: what finished during it is written too

                async def source() -> None:
                    # the sink serves first: a result it finds at start-up is written by its
                    # rebuild, which counts none of what this run finished
                    await wait_any(sink_ready, stop)
                    if opts.retry_failed:
                        retried.extend(await retry_failed(bus, spec, namespace=ns,
                                                          owns=tasks.owns, code_version=digest))
                    retry_ready.set()
                    await submit(bus, spec, limit=opts.limit, stop=stop_workers,
                                 progress=submitted, namespace=ns, code_version=digest,
                                 metrics=metrics)

                async with asyncio.TaskGroup() as tg:
                    tg.create_task(sink.run(stop_sink, ready=sink_ready))
                    tg.create_task(workers_then_sink())
                    tg.create_task(source())
                    tg.create_task(supervise())
                    if opts.progress:
                        tg.create_task(progress.run(stop_progress))
                    await stop_sink.wait()
                    stop_progress.set()
                tokens = llms.completion_tokens
                usage = llms.usage_by_role()
                cache = llms.cache_stats()
        finally:
            await bus.close()
    return RunResult(
        out=str(out), rows=sink.count, expected=expected, done=sink.done, failed=sink.failed,
        elapsed_s=loop.time() - started, completion_tokens=tokens,
        interrupted=stop.is_set() and not sink.finished(), submit=submitted, worker=stats,
        dataset_done=sink.latest.counts()[0], dataset_failed=sink.latest.counts()[1],
        retried=len(retried), sandbox_leased=sandboxes.leased_at_end, filters=sink.counts,
        usage_by_role=usage, tasks=completion.counts(), cache=cache,
        preserved=str(sink.preserved) if sink.preserved else None,
        file_rows=sink.file_rows, left_out=sink.count - sink.file_rows,
        children=sink.children, figures=sink.figures.results(),
        aborted=broken.tripped if broken.tripped is not None and not sink.finished() else None,
    )
