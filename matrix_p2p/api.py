"""Embedding: run a workflow, or serve its roles, from Python code.

The third way to use matrix_p2p, next to ``run`` on one machine and a fleet of
``worker`` processes: a script or a notebook calls ``run(...)``; code that
already has an event loop awaits ``run_async(...)``; an existing asyncio
service (a web app, a scheduler) runs workers inside itself with
``async with serve(...)``. A workflow is a file path, a bundled name
(``"coral"``) or a ``WorkflowSpec`` built in Python (``workflow.spec.parse``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from matrix_p2p import bus as busmod
from matrix_p2p.aio import wait_any
from matrix_p2p.errors import ConfigError, MatrixError
from matrix_p2p.resources.llm import open_fleet_state, open_llms
from matrix_p2p.resources.preflight import preflight as check_servers
from matrix_p2p.runset.broken import stopped_message
from matrix_p2p.runtime.local_run import RunOptions, RunResult, run_workflow
from matrix_p2p.runtime.serve import serve_roles
from matrix_p2p.runtime.worker import WorkerStats
from matrix_p2p.workflow.loader import load
from matrix_p2p.workflow.spec import WorkflowSpec
from matrix_p2p.workflow.version import Mode

Workflow = str | Path | WorkflowSpec


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
    return workflow if isinstance(workflow, WorkflowSpec) else load(str(workflow))


def _conn(nats: str | busmod.ConnectOptions | None, name: str) -> busmod.ConnectOptions | None:
    if nats is None or isinstance(nats, busmod.ConnectOptions):
        return nats
    return busmod.ConnectOptions(url=nats, name=name)


async def run_async(
    workflow: Workflow, *, limit: int | None = None, out: str | Path | None = None,
    store: str | Path | None = None, llm_urls: Sequence[str] = (),
    nats: str | busmod.ConnectOptions | None = None, concurrency: int | None = None,
    retry_failed: bool = False, version: Mode = "check", progress: bool = False,
    stop: asyncio.Event | None = None, preflight: bool = True,
) -> RunResult:
    """``run``, awaited from code that already runs an event loop. Setting ``stop``
    drains the run as Ctrl-C does; calling it again resumes from ``store``.
    ``preflight=False`` skips the check that the LLM endpoints answer and serve the
    workflow's models (else ``ConfigError`` before any work). Raises ``RunAborted``
    when the run stopped as clearly broken (``limits.abort_on_failures``)."""
    spec = as_spec(workflow)
    if limit is not None and limit < 0:
        raise ConfigError(f"limit: must be at least 0, got {limit}")
    if concurrency is not None and concurrency < 1:
        raise ConfigError(f"concurrency: must be positive, got {concurrency}")
    opts = RunOptions(
        limit=limit, out=str(out) if out is not None else None,
        nats=_conn(nats, f"mx-api-{spec.name}"), store=str(store) if store else None,
        llm_urls=list(llm_urls), concurrency=concurrency, progress=progress,
        retry_failed=retry_failed, version_mode=version, preflight=preflight,
    )
    result = await run_workflow(spec, opts, stop or asyncio.Event())
    if result.aborted is not None:
        raise RunAborted(result)
    return result


def run(workflow: Workflow, **options: object) -> RunResult:
    """Run ``workflow`` to completion on this machine and return the run summary
    (``RunResult``: rows, done, failed, the output path, timings). Blocking: for
    scripts and notebooks. Takes the keyword arguments of ``run_async``: ``limit``,
    ``out``, ``store`` (keep it to resume), ``llm_urls`` (else the simulator),
    ``nats`` (else an embedded broker), ``concurrency``, ``retry_failed``,
    ``version`` ("check", "reuse" or "new"), ``preflight``.

    Error handling: configuration problems (an LLM endpoint that does not answer, a
    model it does not serve) raise ``ConfigError`` before any work; failed tasks end as
    failed rows (``result.dataset_failed``), they do not raise; a run stopped because
    its first tasks mostly failed the same way raises ``RunAborted`` (its ``result``
    holds what was written; the unfinished tasks stay in ``store``).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run_async(workflow, **options))  # type: ignore[arg-type]
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
    workflow: Workflow, *, nats: str | busmod.ConnectOptions, roles: Sequence[str] | None = None,
    llm_urls: Sequence[str] = (), concurrency: int | None = None, fleet_state: bool = True,
    drain_timeout: float = 30.0, preflight: bool = True,
) -> AsyncIterator[Served]:
    """Run workers for ``roles`` (default: all) of ``workflow`` inside the caller's event
    loop, against the broker at ``nats``, until the block exits; then drain in-flight
    hops (at most ``drain_timeout``) and close. Ready (consumers bound) on entry.
    First, unless ``preflight=False``, the roles' LLM endpoints are asked whether they
    answer and serve the models the workflow names (else ``ConfigError``).

    Error handling: as ``worker``: agent errors become retries or failed tasks; bus
    errors are retried with backoff; a configuration problem raises on entry.
    """
    spec = as_spec(workflow)
    names = list(roles) if roles is not None else list(spec.roles)
    unknown = [r for r in names if r not in spec.roles]
    if unknown or not names:
        raise ConfigError(f"roles: unknown role(s) {', '.join(unknown) or '(none)'} in workflow "
                          f"{spec.name!r} (roles: {', '.join(spec.roles)})")
    if preflight:
        await check_servers(spec, names, llm_urls=list(llm_urls), sandboxes=False)
    conn = _conn(nats, f"mx-serve-{spec.name}")
    assert conn is not None
    bus = await busmod.connect(conn)
    try:
        async with open_fleet_state(bus, enabled=fleet_state) as fleet, \
                open_llms(spec, names, list(llm_urls), fleet=fleet) as llms:
            stats, stop, ready = WorkerStats(), asyncio.Event(), asyncio.Event()
            # owned here: awaited below on every path out of the block
            workers = asyncio.create_task(serve_roles(
                bus, spec, names, llm_for=llms.by_role, stop=stop, concurrency=concurrency,
                stats=stats, ready=ready, drain_timeout=drain_timeout))
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
