"""Sources: input rows become tasks, each id derived from (source, row, trial).

Submitting twice creates nothing new: an id already recorded in the
workflow's "submitted" key-value bucket is skipped. Admission control keeps
the number of live tasks in the task stream under ``limits.max_inflight``,
and rows are read lazily, so a million-row file never floods memory or the
stream. A row that is not valid JSON is not dropped: it becomes a task that
ends as failed at once, with the file and line in its error.
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import structlog

from matrix_p2p import envelope
from matrix_p2p.aio import pause
from matrix_p2p.backoff import Retrying
from matrix_p2p.bus import Bus
from matrix_p2p.errors import ConfigError
from matrix_p2p.metrics import NullMetrics, Recorder
from matrix_p2p.runtime.attempts import kv_key
from matrix_p2p.runtime.topology import Names, ensure_workflow, hop_msg_id
from matrix_p2p.workflow.spec import WorkflowSpec

log = structlog.get_logger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_-]")


class Row(msgspec.Struct, frozen=True):
    source: str  # as the workflow gives it (relative stays relative)
    index: int  # line number (files) or position (datasets): seeds and messages
    key: str
    data: dict[str, Any] | None
    error: str | None = None
    row_index: int = 0  # from 0: the row's place in its source, as dataset tools count


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


def source_files(spec: WorkflowSpec) -> list[Path]:
    if spec.source.path is None:
        raise ConfigError(f"{spec.path}: source: no `path` given")
    pattern = spec.source.path
    if not Path(pattern).is_absolute():
        pattern = str(spec.base_dir / pattern)
    files = sorted(Path(p) for p in glob.glob(pattern))
    if not files:
        raise ConfigError(f"{spec.path}: source.path: no file matches {spec.source.path!r}")
    return files


def iter_rows(spec: WorkflowSpec) -> Iterator[Row]:
    """Rows in a stable order, read lazily."""
    if spec.source.hf is not None:
        yield from _iter_hf(spec)
        return
    id_field = spec.source.id_field
    relative = not Path(spec.source.path or "").is_absolute()
    for path in source_files(spec):
        # the source as the workflow names it: a relative path stays relative to the file
        name = os.path.relpath(path, spec.base_dir) if relative else str(path)
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                default_key = f"{path.stem}-{lineno}"
                ri = lineno - 1
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield Row(name, lineno, default_key, None,
                              error=f"{path}:{lineno}: not valid JSON: {exc.msg}", row_index=ri)
                    continue
                if not isinstance(data, dict):
                    yield Row(name, lineno, default_key, None,
                              error=f"{path}:{lineno}: expected a JSON object, got "
                                    f"{type(data).__name__}", row_index=ri)
                    continue
                key = default_key
                if id_field is not None:
                    if id_field not in data:
                        yield Row(name, lineno, default_key, data,
                                  error=f"{path}:{lineno}: no {id_field!r} field (source.id_field)",
                                  row_index=ri)
                        continue
                    key = str(data[id_field])
                yield Row(name, lineno, key, data, row_index=ri)


def _iter_hf(spec: WorkflowSpec) -> Iterator[Row]:
    hf = spec.source.hf
    assert hf is not None
    try:
        import datasets  # optional extra: matrix_p2p[hf]
    except ImportError:
        raise ConfigError(
            f"{spec.path}: source.hf needs the 'datasets' package (pip install 'matrix_p2p[hf]')"
        ) from None
    ds = datasets.load_dataset(hf.dataset, hf.config, split=hf.split, streaming=True)
    name = f"hf:{hf.dataset}/{hf.split}"
    for i, data in enumerate(ds):
        key = str(data[spec.source.id_field]) if spec.source.id_field else f"{hf.split}-{i}"
        yield Row(name, i, key, dict(data), row_index=i)


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


def count_tasks(spec: WorkflowSpec, limit: int | None = None) -> int:
    """How many tasks ``submit`` would create (reads the source once)."""
    n = 0
    for _row in iter_rows(spec):
        if limit is not None and n >= limit:
            break
        n += 1
    return n * spec.trials
