"""Attempts: a failed task resubmitted by ``--retry-failed`` runs again under a new id.

Attempt 1 is the original id ``x``; attempt ``n`` is ``x~a<n>``. Each attempt
is its own task (its own hops and msg-ids), so exactly-once holds per
attempt; the sink keeps the latest attempt of each task (one row per ``x``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import structlog

from matrix_p2p import envelope
from matrix_p2p.bus import Bus, KeyValue
from matrix_p2p.envelope import EnvelopeError, Task
from matrix_p2p.runtime.topology import ensure_workflow, hop_msg_id
from matrix_p2p.workflow.spec import WorkflowSpec

log = structlog.get_logger(__name__)

_ATTEMPT_RE = re.compile(r"^(?P<base>.+)~a(?P<n>[0-9]+)$")


def attempt_id(base: str, attempt: int) -> str:
    """``x``, 1 -> ``x``; ``x``, 3 -> ``x~a3``."""
    return base if attempt <= 1 else f"{base}~a{attempt}"


def split_attempt(task_id: str) -> tuple[str, int]:
    """``x~a3`` -> ``("x", 3)``; an id without the suffix is attempt 1."""
    m = _ATTEMPT_RE.match(task_id)
    return (m["base"], int(m["n"])) if m else (task_id, 1)


def kv_key(task_id: str) -> str:
    # "~" is not allowed in key-value keys; "=" is, and source ids never contain it
    return task_id.replace("~", "=")


class Latest:
    """The latest attempt seen of each task, by base id. Pure."""

    __slots__ = ("by_base",)

    def __init__(self) -> None:
        self.by_base: dict[str, tuple[int, str, str]] = {}  # base -> (attempt, id, status)

    def offer(self, task_id: str, status: str) -> str:
        """``new``, ``duplicate`` (this attempt is kept already), ``stale`` (a later attempt
        is kept) or ``supersedes`` (it replaces an earlier attempt)."""
        base, n = split_attempt(task_id)
        have = self.by_base.get(base)
        if have is not None:
            if have[0] == n:
                return "duplicate"
            if have[0] > n:
                return "stale"
        self.by_base[base] = (n, task_id, status)
        return "new" if have is None else "supersedes"

    def ids(self) -> set[str]:
        return {tid for _, tid, _ in self.by_base.values()}

    def counts(self) -> tuple[int, int]:
        """(done, failed) over the latest attempts."""
        failed = sum(1 for _, _, s in self.by_base.values() if s == "failed")
        return len(self.by_base) - failed, failed


def next_attempt(task: Task, entry: str, code_version: str | None = None) -> Task:
    """A fresh envelope for the next attempt of failed ``task``: same input, seed and
    trial, no turns, running at the entry role, labelled with the code that will run it
    (``code_version``; the failed attempt's when not given). Pure."""
    base, n = split_attempt(task.id)
    return envelope.new_task(
        task_id=attempt_id(base, n + 1), workflow=task.workflow,
        workflow_version=task.workflow_version,
        code_version=task.code_version if code_version is None else code_version, role=entry,
        row=task.row, source=task.source, row_index=task.row_index, trial=task.trial, seed=task.seed,
    )


async def retry_failed(bus: Bus, spec: WorkflowSpec, *, namespace: str | None = None,
                       owns: Callable[[str], bool] | None = None,
                       code_version: str | None = None) -> list[str]:
    """Resubmit every task whose latest attempt failed, as its next attempt. Returns the
    ids of the attempts the caller now waits for: those published now, and those an
    earlier, interrupted call published that have not ended yet. Idempotent: an attempt
    already recorded in the "submitted" bucket is not published again (a crash mid-way is
    resumed by running it again). ``owns`` limits it to one run's tasks
    (``runset.taskset``); ``code_version`` labels the new attempts.

    Error handling: bus errors propagate.
    """
    from matrix_p2p.runtime.replay import split_replay_id
    from matrix_p2p.workflow.version import namespace_of

    names = await ensure_workflow(bus, spec)
    kv = await bus.key_value(names.submitted_bucket)
    latest: dict[str, Task] = {}
    order = Latest()
    async for m in bus.iter_stream(names.results_stream, f"{names.prefix}.{names.workflow}.*"):
        try:
            task = envelope.decode(m.data)
        except EnvelopeError:
            continue
        if split_replay_id(task.id)[1]:
            continue  # replays are retried by replaying again
        if namespace is not None and namespace_of(task.id) != namespace:
            continue  # another code version's task
        if owns is not None and not owns(task.id):
            continue  # not one of this run's tasks
        if order.offer(task.id, task.status) in ("new", "supersedes"):
            latest[split_attempt(task.id)[0]] = task
    entry = spec.entry_role()
    new: list[str] = []
    for task in latest.values():
        if task.status != "failed" or (task.error or "").startswith("bad input row"):
            continue  # a bad input row would fail again: fix the row instead
        nxt = next_attempt(task, entry, code_version)
        if await kv.exists(kv_key(nxt.id)):
            new.append(nxt.id)  # submitted by an interrupted run: still to wait for
            continue
        await bus.publish(names.task(entry), envelope.encode(nxt), msg_id=hop_msg_id(nxt.id, 0))
        await kv.create(kv_key(nxt.id))
        new.append(nxt.id)
    log.info("retry_failed.submitted", workflow=spec.name, tasks=len(new))
    return new


async def submitted_attempts(kv: KeyValue, failed: list[tuple[str, int]]) -> list[str]:
    """The later attempts recorded in the "submitted" bucket ``kv`` for tasks whose
    latest known attempt failed (``(base, attempt)`` pairs): what an earlier
    ``--retry-failed`` submitted and a run must still wait for.

    Error handling: bus errors propagate."""
    found: list[str] = []
    for base, n in failed:
        while await kv.exists(kv_key(attempt_id(base, n + 1))):
            n += 1
            found.append(attempt_id(base, n))
    return found

