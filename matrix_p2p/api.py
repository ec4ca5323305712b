"""Embedding: run a workflow, or serve its roles, from Python code.

The third way to use matrix_p2p, next to ``run`` on one machine and a fleet of
``worker`` processes: a script or a notebook calls ``run(...)``; code that
already has an event loop awaits ``run_async(...)``; an existing asyncio
service (a web app, a scheduler) runs workers inside itself with
``async with serve(...)``, and feeds them with ``submit(...)`` and reads rows
back with ``results(...)`` or ``collect(...)``. A workflow is a file path, a
bundled name (``"coral"``) or a ``WorkflowSpec`` built in Python
(``workflow.spec.parse``). A source is what ``--source`` takes, or rows in memory.

Logging: as a library, quiet unless the application configures logging
(events are ``logging`` records under the ``matrix_p2p`` logger; see
``logs.library``); ``log_level=`` prints them on stderr for one call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from matrix_p2p import bus as busmod
from matrix_p2p import logs
from matrix_p2p.aio import wait_any
from matrix_p2p.embed import args
from matrix_p2p.embed import sources as srcmod
from matrix_p2p.embed.results import Results, Submission, Wanted, follow, submit_tasks
from matrix_p2p.errors import ConfigError, MatrixError
from matrix_p2p.resources.llm import open_fleet_state, open_llms
from matrix_p2p.resources.preflight import preflight as check_servers
from matrix_p2p.runset.broken import stopped_message
from matrix_p2p.runtime import summary
from matrix_p2p.runtime.attempts import split_attempt
from matrix_p2p.runtime.local_run import RunOptions, RunResult, run_workflow
from matrix_p2p.runtime.serve import serve_roles
from matrix_p2p.runtime.worker import WorkerStats
from matrix_p2p.workflow.loader import load
from matrix_p2p.workflow.spec import WorkflowSpec
from matrix_p2p.workflow.version import Mode

Workflow = str | Path | WorkflowSpec
# a path, a glob or "hf:NAME[:SPLIT]" (as --source); or rows: an iterable of dicts, a pandas
# DataFrame, a Hugging Face datasets.Dataset
Source = Any
VERSIONS: tuple[Mode, ...] = ("check", "reuse", "new")

__all__ = ["Results", "RunAborted", "Served", "Submission", "as_spec", "collect", "results", "run",
           "run_async", "serve", "submit"]


class RunAborted(MatrixError):
    """The run stopped early: its first tasks mostly failed the same way
    (``limits.abort_on_failures``). ``str(exc)`` is the one line ``run`` prints;
    ``result`` is what was written (``result.aborted`` the reason); the unfinished
    tasks stay in the store, and running again (``retry_failed=True`` for the failed
    ones) resumes."""

    def __init__(self, result: RunResult) -> None:
        super().__init__(stopped_message(result.aborted or ""))
        self.result = result


def as_spec(workflow: Workflow) -> WorkflowSpec:
    """A ``WorkflowSpec`` from a path, a bundled name or a spec."""
    checked = args.workflow(workflow)
    return checked if isinstance(checked, WorkflowSpec) else load(str(checked))


def _store(spec: WorkflowSpec, store: str | None) -> Path:
    # the embedded broker's default store (runtime/local_run.py), where rows in memory go too
    return Path(store) if store else Path(".mx") / spec.name


async def run_async(
    workflow: Workflow, *, source: Source = None, limit: int | None = None,
    out: str | Path | None = None, store: str | Path | None = None,
    llm_urls: str | Iterable[str] = (), sandbox_urls: str | Iterable[str] = (),
    nats: str | busmod.ConnectOptions | None = None, concurrency: int | None = None,
    sim_replicas: int = 1, retry_failed: bool = False, kept_only: bool = False,
    version: Mode = "check", fleet_state: bool = True, metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1", sync_interval: bool = False, progress: bool = False,
    log_level: str | None = None, stop: asyncio.Event | None = None, preflight: bool = True,
    cache: bool = True,
) -> RunResult:
    """``run``, awaited from code that already runs an event loop. Setting ``stop``
    drains the run as Ctrl-C does; calling it again resumes from ``store``.
    ``preflight=False`` skips the check that the LLM endpoints answer and serve the
    workflow's models (else ``ConfigError`` before any work). ``cache=False`` asks the
    servers even where the workflow turns the LLM response cache on. Raises ``RunAborted``
    when the run stopped as clearly broken (``limits.abort_on_failures``)."""
    limit = args.count("limit", limit, minimum=0)
    out_path = args.path("out", out)
    store_path = args.path("store", store)
    opts = RunOptions(
        limit=limit, out=out_path, store=store_path,
        nats=None,  # below, once the workflow's name is known
        sync="interval" if args.flag("sync_interval", sync_interval) else "always",
        llm_urls=args.urls("llm_urls", llm_urls),
        sandbox_urls=args.urls("sandbox_urls", sandbox_urls),
        sim_replicas=args.required_count("sim_replicas", sim_replicas, minimum=1),
        concurrency=args.count("concurrency", concurrency, minimum=1),
        progress=args.flag("progress", progress),
        fleet_state=args.flag("fleet_state", fleet_state),
        retry_failed=args.flag("retry_failed", retry_failed),
        version_mode=args.choice("version", version, VERSIONS),
        kept_only=args.flag("kept_only", kept_only),
        metrics_port=args.port("metrics_port", metrics_port),
        metrics_host=args.host("metrics_host", metrics_host),
        preflight=args.flag("preflight", preflight),
        cache=args.flag("cache", cache),
    )
    stop = args.event("stop", stop)
    conn = nats
    logs.library()
    with logs.showing(log_level):
        spec = as_spec(workflow)
        opts.nats = args.nats(conn, f"mx-api-{spec.name}")
        # rows in memory are written to a file first (a thread: they may be many)
        spec = await asyncio.to_thread(srcmod.apply, spec, source, _store(spec, store_path))
        result = await run_workflow(spec, opts, stop or asyncio.Event())
        # the same summary file as the CLI's run (<out>.summary.json)
        result.summary = str(summary.write_json(summary.summarize(result, spec)))
    if result.aborted is not None:
        raise RunAborted(result)
    return result


def run(workflow: Workflow, **options: Any) -> RunResult:
    """Run ``workflow`` to completion on this machine and return the run summary
    (``RunResult``: rows, done, failed, the output path ``out``, the summary file
    ``summary``, timings). Blocking: for scripts and notebooks.

    Takes the keyword arguments of ``run_async``, the CLI's ``run`` flags:
    ``source`` (a path, glob or ``hf:NAME[:SPLIT]``, or rows: an iterable of dicts,
    a pandas DataFrame, a ``datasets.Dataset``), ``limit``, ``out``, ``store`` (keep
    it to resume), ``llm_urls`` (one URL or a list; else the simulator),
    ``sandbox_urls``, ``nats`` (else an embedded broker), ``concurrency``,
    ``sim_replicas``, ``retry_failed``, ``kept_only``, ``version`` ("check", "reuse"
    or "new"), ``fleet_state``, ``metrics_port``, ``metrics_host``,
    ``sync_interval``, ``progress``, ``log_level``, ``stop``, ``preflight`` and ``cache``.

    Error handling: a wrong argument raises ``TypeError`` (its type) or
    ``ConfigError`` (its value), a bad workflow ``ConfigError``, before any work;
    an LLM endpoint that does not answer, or a model it does not serve, raises
    ``ConfigError`` too (``preflight=False`` skips that check). Failed tasks end as
    failed rows (``result.dataset_failed``), they do not raise: what to do about them
    is the caller's business; but a run stopped because its first tasks mostly failed
    the same way raises ``RunAborted`` (its ``result`` holds what was written; the
    unfinished tasks stay in ``store``).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run_async(workflow, **options))
    raise ConfigError("matrix_p2p.run: an event loop is already running here (a notebook?): "
                      "use `await matrix_p2p.run_async(...)`")


class Served:
    """What ``serve`` yields: the workflow and the workers' counters."""

    def __init__(self, spec: WorkflowSpec, roles: list[str], stats: WorkerStats) -> None:
        self.spec = spec
        self.roles = roles
        self.stats = stats


@contextlib.asynccontextmanager
async def serve(
    workflow: Workflow, *, nats: str | busmod.ConnectOptions, roles: Iterable[str] | None = None,
    llm_urls: str | Iterable[str] = (), concurrency: int | None = None, fleet_state: bool = True,
    drain_timeout: float = 30.0, log_level: str | None = None, preflight: bool = True,
    cache: bool = True,
) -> AsyncIterator[Served]:
    """Run workers for ``roles`` (default: all) of ``workflow`` inside the caller's event
    loop, against the broker at ``nats``, until the block exits; then drain in-flight
    hops (at most ``drain_timeout``) and close. Ready (consumers bound) on entry.
    Feed it with ``submit``; read rows with ``results`` or ``collect``.
    First, unless ``preflight=False``, the roles' LLM endpoints are asked whether they
    answer and serve the models the workflow names (else ``ConfigError``).

    Error handling: as ``worker``: agent errors become retries or failed tasks; bus
    errors are retried with backoff; a configuration problem raises on entry.
    """
    urls = args.urls("llm_urls", llm_urls)
    wanted_roles = args.strings("roles", roles)
    concurrency = args.count("concurrency", concurrency, minimum=1)
    fleet = args.flag("fleet_state", fleet_state)
    drain = args.timeout("drain_timeout", drain_timeout)
    assert drain is not None
    logs.library()
    with logs.showing(log_level):
        spec = as_spec(workflow)
        names = wanted_roles if wanted_roles is not None else list(spec.roles)
        unknown = [r for r in names if r not in spec.roles]
        if unknown or not names:
            raise ConfigError(f"roles: unknown role(s) {', '.join(unknown) or '(none)'} in "
                              f"workflow {spec.name!r} (roles: {', '.join(spec.roles)})")
        if args.flag("preflight", preflight):
            await check_servers(spec, names, llm_urls=urls, sandboxes=False)
        conn = _required_nats(nats, f"mx-serve-{spec.name}")
        bus = await busmod.connect(conn)
        try:
            async with open_fleet_state(bus, enabled=fleet) as fleet_state_, \
                    open_llms(spec, names, urls, fleet=fleet_state_,
                              cache_bus=bus if args.flag("cache", cache) else None) as llms:
                stats, stop, ready = WorkerStats(), asyncio.Event(), asyncio.Event()
                # owned here: awaited below on every path out of the block
                workers = asyncio.create_task(serve_roles(
                    bus, spec, names, llm_for=llms.by_role, stop=stop, concurrency=concurrency,
                    stats=stats, ready=ready, drain_timeout=drain))
                done = asyncio.Event()
                workers.add_done_callback(lambda _: done.set())
                await wait_any(ready, done)
                try:
                    if workers.done():
                        workers.result()  # raises what stopped it
                    yield Served(spec, names, stats)
                finally:
                    stop.set()
                    await workers
        finally:
            await bus.close()


def _required_nats(nats: object, name: str) -> busmod.ConnectOptions:
    conn = args.nats(nats, name)
    if conn is None:
        raise ConfigError("nats: a broker URL is required (e.g. 'nats://127.0.0.1:4222')")
    return conn


async def submit(
    workflow: Workflow, *, nats: str | busmod.ConnectOptions, source: Source = None,
    limit: int | None = None, version: Mode = "check", retry_failed: bool = False,
    store: str | Path | None = None,
) -> Submission:
    """Create one task per input row and trial on the broker at ``nats``, for workers
    (``serve``, ``worker`` processes) to run: the CLI's ``submit``. Idempotent: ids
    derive from source, row and trial, so submitting again creates nothing new.
    ``source`` as for ``run`` (rows in memory are written under ``store``, default
    ``.mx/<workflow>``). Returns a ``Submission``: its ``ids`` are the tasks asked
    for, which ``results``/``collect`` take to read exactly those rows.

    Error handling: wrong arguments raise ``TypeError``/``ConfigError``; a changed
    workflow with ``version="check"`` raises ``ConfigError``; bus errors propagate.
    """
    limit = args.count("limit", limit, minimum=0)
    mode = args.choice("version", version, VERSIONS)
    retry = args.flag("retry_failed", retry_failed)
    store_path = args.path("store", store)
    logs.library()
    spec = as_spec(workflow)
    conn = _required_nats(nats, f"mx-submit-{spec.name}")
    spec = await asyncio.to_thread(srcmod.apply, spec, source, _store(spec, store_path))
    bus = await busmod.connect(conn)
    try:
        return await submit_tasks(bus, spec, limit=limit, version=mode, retry=retry)
    finally:
        await bus.close()


def _ids(ids: object) -> frozenset[str] | None:
    if ids is None or isinstance(ids, Submission):
        return ids.ids if ids is not None else None
    checked = args.strings("ids", ids)
    return frozenset(checked) if checked is not None else None


def results(
    workflow: Workflow, *, nats: str | busmod.ConnectOptions,
    ids: Submission | Iterable[str] | None = None, stop: asyncio.Event | None = None,
) -> Results:
    """The rows of finished tasks, as they finish: ``async for row in results(...)``.
    A row is a dict, as the sink writes it (``id``, ``status``, ``error``, ``input``,
    ``result``, ``dialogue``, ``usage``, ...; docs/agents.md, "The row schema").

    ``ids`` (a ``Submission`` or task ids): only those tasks (and their fan-out
    children); the iteration ends once every one has a row. None: every result the
    workflow's stream holds, earlier runs' included, then new ones until ``stop`` is
    set or the caller stops. A task retried later comes again with its new attempt's
    row (id ``<id>~a<n>``). Use ``async with results(...) as rows`` when you may stop
    early: the connection closes with the block.

    Error handling: wrong arguments raise at once; bus errors propagate from the
    iteration; results that cannot be decoded are skipped (the sink dead-letters them).
    """
    wanted_ids = _ids(ids)
    stop = args.event("stop", stop)
    logs.library()
    spec = as_spec(workflow)
    conn = _required_nats(nats, f"mx-results-{spec.name}")

    async def rows() -> AsyncIterator[dict[str, Any]]:
        bus = await busmod.connect(conn)
        try:
            async for row in follow(bus, spec, Wanted(wanted_ids), stop):
                yield row
        finally:
            await bus.close()

    return Results(rows)


async def collect(
    workflow: Workflow, *, nats: str | busmod.ConnectOptions,
    ids: Submission | Iterable[str] | None = None, expect: int | None = None,
) -> list[dict[str, Any]]:
    """Wait for rows and return them: every task of ``ids`` (a ``Submission`` or task
    ids, with their fan-out children), or the first ``expect`` distinct tasks of the
    workflow's results stream (earlier runs' included). One row per task: its latest
    attempt. As ``sink --expect N``, without a file. Bound the wait with
    ``async with asyncio.timeout(s):``.

    Error handling: neither or both of ``ids`` and ``expect`` is a ``ConfigError``;
    bus errors propagate.
    """
    wanted_ids = _ids(ids)
    expect = args.count("expect", expect, minimum=0)
    if (wanted_ids is None) == (expect is None):
        raise ConfigError("collect: give either `ids` (a Submission or task ids) or `expect`")
    logs.library()
    spec = as_spec(workflow)
    conn = _required_nats(nats, f"mx-collect-{spec.name}")
    got: dict[str, dict[str, Any]] = {}  # by task, the latest attempt
    bus = await busmod.connect(conn)
    try:
        async for row in follow(bus, spec, Wanted(wanted_ids, expect)):
            got[split_attempt(row["id"])[0]] = row
    finally:
        await bus.close()
    return list(got.values())
