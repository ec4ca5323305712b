"""Sources: input rows become tasks, each id derived from (source, row, trial).

Submitting twice creates nothing new: an id already recorded in the
workflow's "submitted" key-value bucket is skipped. Admission control keeps
the number of live tasks in the task stream under ``limits.max_inflight``,
and rows are read lazily (``rows``), so a million-row file never floods memory or
the stream. A row that is not valid JSON is not dropped: it becomes a task that
ends as failed at once, with the file and line in its error.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable

import msgspec
import structlog

from matrix_p2p import envelope
from matrix_p2p.aio import pause
from matrix_p2p.backoff import Retrying
from matrix_p2p.bus import Bus
from matrix_p2p.metrics import NullMetrics, Recorder
from matrix_p2p.runtime.attempts import kv_key
from matrix_p2p.runtime.offload import Offloader
from matrix_p2p.runtime.rows import Row, iter_rows
from matrix_p2p.runtime.topology import Names, ensure_workflow, hop_msg_id
from matrix_p2p.workflow.spec import WorkflowSpec

log = structlog.get_logger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_-]")


class SubmitResult(msgspec.Struct):
    submitted: int = 0
    already: int = 0
    bad_rows: int = 0

    @property
    def total(self) -> int:
        return self.submitted + self.already + self.bad_rows


def task_id(key: str, trial: int) -> str:
    """A readable id, safe as a subject token and KV key; a hash keeps it unique."""
    safe = _SAFE.sub("_", key)
    if safe != key or len(safe) > 64:
        safe = f"{safe[:48]}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    return f"{safe}-t{trial}"


async def submit(
    bus: Bus,
    spec: WorkflowSpec,
    *,
    limit: int | None = None,
    stop: asyncio.Event | None = None,
    progress: SubmitResult | None = None,
    window: int | None = None,
    parallel: int = 256,
    replicas: int | None = None,
    namespace: str = "",
    code_version: str = "",
    metrics: Recorder | None = None,
) -> SubmitResult:
    """Submit the first ``limit`` rows (times ``spec.trials``). Idempotent; resumable.

    ``namespace`` (``workflow/version.py``) suffixes every id: a fresh set of
    tasks for a new code version; ``code_version`` is recorded in each envelope.

    Error handling: bus errors propagate (the caller reports them); a bad row
    becomes a failed task, counted in ``bad_rows``.
    """
    names = await ensure_workflow(bus, spec, replicas=replicas)
    kv = await bus.key_value(names.submitted_bucket, replicas=replicas)
    result = progress or SubmitResult()
    window = window or spec.limits.max_inflight
    entry = spec.entry_role()
    sem = asyncio.Semaphore(parallel)
    ns = f"~v{namespace}" if namespace else ""
    offloader = Offloader(bus, spec)
    recorder = metrics or NullMetrics()

    async def one(row: Row, trial: int) -> None:
        tid = task_id(row.key, trial) + ns
        try:
            if await kv.exists(kv_key(tid)):
                result.already += 1
                return
            task = envelope.new_task(
                task_id=tid, workflow=spec.name, workflow_version=spec.version,
                code_version=code_version, role=entry,
                row=row.data or {}, source=row.source, row_index=row.row_index, trial=trial,
                seed=spec.seed * 1_000_003 + row.index * 101 + trial,
            )
            if row.error is not None:
                task.status = "failed"
                task.error = f"bad input row: {row.error}"
                task.finished_at = task.created_at
                subject = names.failed
                result.bad_rows += 1
                log.warning("source.bad_row", error=row.error, task=tid)
            else:
                subject = names.task(entry)
                result.submitted += 1
            await offloader.store(task)  # big values to the object store, before the publish
            # publish first, then record: a crash in between republishes (dedup'd by msg-id)
            await bus.publish(subject, envelope.encode(task), msg_id=hop_msg_id(tid, 0))
            await kv.create(kv_key(tid))
            recorder.tasks_submitted()
        finally:
            sending.discard(tid)
            sem.release()

    # admitted but not yet stored: the stream's count does not show them, admission does
    sending: set[str] = set()
    rows_seen = 0
    live = 0
    async with asyncio.TaskGroup() as tg:
        for row in iter_rows(spec):
            if limit is not None and rows_seen >= limit:
                break
            rows_seen += 1
            for trial in range(spec.trials):
                if stop is not None and stop.is_set():
                    return result
                # admission control: live tasks in the stream stay under the window
                if live >= window or (result.submitted % 256 == 0 and result.submitted):
                    live = await wait_for_room(bus, names, window, stop,
                                               sending=lambda: len(sending))
                await sem.acquire()
                live += 1
                sending.add(task_id(row.key, trial) + ns)
                tg.create_task(one(row, trial))
    return result


async def wait_for_room(bus: Bus, names: Names, window: int, stop: asyncio.Event | None,
                        *, sending: Callable[[], int] | None = None) -> int:
    """Admission control: wait until fewer than ``window`` tasks are live: stored in the
    task stream, plus those this process admitted whose publish has not been stored yet
    (``sending``; reading the stream alone let 2.5x the window through). Returns the live
    count it saw."""
    backoff = Retrying(0.05, 1.0)
    while True:
        live = await bus.stream_msgs(names.tasks_stream) + (sending() if sending else 0)
        if live < window or (stop is not None and stop.is_set()):
            return live
        await pause(backoff.next(), stop)

