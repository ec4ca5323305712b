"""Submit tasks and read their rows back, for code that hosts workers with ``serve``.

``submit_tasks`` is the CLI's ``submit`` (idempotent; ids from source, row and
trial) that also returns the ids it asked for. ``follow`` reads the workflow's
results stream by sequence, as ``replay`` and the sink's rebuild do: it leaves
no consumer on the broker and takes nothing from a sink's (results are kept,
limits retention), so it can run beside a ``sink`` process or alone. Rows are
the sink's rows (``sink.to_row``), offloaded values put back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import msgspec

from matrix_p2p import bus as busmod
from matrix_p2p import envelope
from matrix_p2p.aio import pause
from matrix_p2p.backoff import Retrying
from matrix_p2p.envelope import EnvelopeError, Task
from matrix_p2p.runset.taskset import plan
from matrix_p2p.runtime.attempts import Latest, retry_failed, split_attempt
from matrix_p2p.runtime.offload import Offloader
from matrix_p2p.runtime.rowformat import to_row
from matrix_p2p.runtime.source import submit
from matrix_p2p.runtime.topology import Names, ensure_workflow
from matrix_p2p.workflow.spec import WorkflowSpec
from matrix_p2p.workflow.version import Mode, code_hash, resolve


class Submission(msgspec.Struct, frozen=True, kw_only=True):
    """What ``submit`` asked for: the ids of its tasks (``results(ids=...)`` and
    ``collect(ids=...)`` take it), and how many were new."""

    workflow: str
    ids: frozenset[str]  # one per row and trial; a retried task's latest attempt
    submitted: int  # new tasks
    already: int  # submitted before (by an earlier call, or another process)
    bad_rows: int  # rows that could not be read: tasks failed at once
    retried: int = 0  # failed tasks resubmitted as a new attempt (retry_failed)


class Wanted:
    """Which results are wanted, and when all of them have come. Pure.

    ``ids``: a submission's task ids (an earlier attempt than the one named is not
    wanted; a later one is, after the one it supersedes; fan-out children of a
    wanted task are wanted); None: every task. ``expect``: complete
    after that many distinct tasks (with ``ids`` None).
    """

    def __init__(self, ids: Iterable[str] | None = None, expect: int | None = None) -> None:
        self.attempt: dict[str, int] | None = None
        if ids is not None:
            self.attempt = {}
            for tid in ids:
                base, n = split_attempt(tid)
                self.attempt[base] = max(n, self.attempt.get(base, 0))
        self.expect = expect
        self.latest = Latest()
        self.children: set[str] = set()
        self.announced = 0  # children the offered parents spawned
        self._missing = len(self.attempt) if self.attempt is not None else 0

    def offer(self, tid: str, status: str, children: int = 0) -> bool:
        """True: a result to hand out (new, or a later attempt of one handed out)."""
        root, child, _ = tid.partition("/")
        base, n = split_attempt(root)
        if self.attempt is not None and (base not in self.attempt or n < self.attempt[base]):
            return False  # not ours, or an attempt the wanted one replaces
        if child:
            if tid in self.children:
                return False
            self.children.add(tid)
        else:
            before = self.latest.by_base.get(base)
            if self.latest.offer(tid, status) in ("duplicate", "stale"):
                return False
            if self.attempt is not None and n >= self.attempt[base] and (
                    before is None or before[0] < self.attempt[base]):
                self._missing -= 1
        self.announced += children
        return True

    @property
    def complete(self) -> bool:
        if self.attempt is None and self.expect is None:
            return False  # every task: follow until stopped
        if self.attempt is not None and self._missing:
            return False
        if self.expect is not None and len(self.latest.by_base) < self.expect:
            return False
        return len(self.children) >= self.announced


async def submit_tasks(bus: busmod.Bus, spec: WorkflowSpec, *, limit: int | None, version: Mode,
                       retry: bool) -> Submission:
    """``submit`` as the CLI does it (the code version resolved, failed tasks retried
    on request), plus the ids of the tasks it asked for.

    Error handling: a changed workflow with ``version="check"`` raises ``ConfigError``;
    bus errors propagate.
    """
    planned = plan(spec, limit)  # the ids asked for; duplicate ids: one line, first
    digest = code_hash(spec)
    ns = await resolve(bus, Names.of(spec).submitted_bucket, spec, digest, version)
    got = await submit(bus, spec, limit=limit, namespace=ns, code_version=digest)
    tasks = planned.in_namespace(ns)
    ids = set(tasks.ids)
    # only this submission's failed tasks, labelled with the code that runs them now
    again = await retry_failed(bus, spec, namespace=ns, owns=tasks.owns,
                               code_version=digest) if retry else []
    for tid in again:  # its new attempt is the one wanted
        ids.discard(split_attempt(tid)[0])
        ids.add(tid)
    retried = len(again)
    return Submission(workflow=spec.name, ids=frozenset(ids), submitted=got.submitted,
                      already=got.already, bad_rows=got.bad_rows, retried=retried)


async def follow(bus: busmod.Bus, spec: WorkflowSpec, wanted: Wanted,
                 stop: asyncio.Event | None = None) -> AsyncIterator[dict[str, Any]]:
    """The rows of the wanted results: those stored first, then each as it comes, until
    ``wanted`` is complete or ``stop`` is set. Wanted ids are checked after reading all
    that is stored, so that a later attempt already there comes too.

    Error handling: an undecodable result is skipped (the sink dead-letters it); a
    value whose offloaded object is gone stays a reference; bus errors propagate.
    """
    names = await ensure_workflow(bus, spec, roles=())
    offloader = Offloader(bus, spec)
    seq = 1
    idle = Retrying(0.05, 1.0)
    while True:
        last = (await bus.stream_bounds(names.results_stream))[1]
        if seq <= last:
            async for m in bus.iter_stream(names.results_stream, start=seq, end=last):
                seq = m.seq + 1
                task = _decode(m.data)
                if task is None or not wanted.offer(task.id, task.status,
                                                    int(task.state.get("children", 0) or 0)):
                    continue
                await offloader.load(task, missing_ok=True)
                yield to_row(task)
                if wanted.attempt is None and wanted.complete:
                    return  # a count: the first `expect` tasks, as `sink --expect`
            seq = max(seq, last + 1)
            idle.reset()
        if wanted.complete or (stop is not None and stop.is_set()):
            return
        if seq > last:
            # nothing new stored: look again soon (a read leaves no consumer to push to us)
            await pause(idle.next(), stop)


def _decode(data: bytes) -> Task | None:
    try:
        return envelope.decode(data)
    except EnvelopeError:
        return None


class Results:
    """``async for row in results``: rows as dicts (the sink's row format). Use it as
    ``async with matrix_p2p.results(...) as rows: async for row in rows: ...`` when
    you may stop early: the block's end closes the broker connection (so does the
    iteration's end)."""

    def __init__(self, rows: Callable[[], AsyncIterator[dict[str, Any]]]) -> None:
        self._make = rows
        self._rows: AsyncIterator[dict[str, Any]] | None = None

    def __aiter__(self) -> Results:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._rows is None:
            self._rows = self._make()
        return await anext(self._rows)

    async def aclose(self) -> None:
        close: Callable[[], Awaitable[None]] | None = getattr(self._rows, "aclose", None)
        if close is not None:
            await close()

    async def __aenter__(self) -> Results:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
