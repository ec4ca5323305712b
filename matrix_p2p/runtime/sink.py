"""Sinks: finished tasks from the results stream become dataset rows, each task once.

The sink's durable consumer (named after the dataset, not the output path)
resumes where it stopped. Rows are appended and flushed to disk (fsync), and
the file's good length recorded in a sidecar, before their messages are
acked; a crash in between redelivers them, the ids already in the file are
skipped, and whatever lies past the good length (a torn row) is cut off at
start-up. A file that was deleted, truncated or written by another run is
rebuilt from the results stream (``sink_state.py``). Parquet is not
appendable: rows collect in ``<out>.mx.jsonl`` and become ``<out>`` at close,
by temp file and rename. The format follows ``out``'s extension
(``files.out_format``). Offloaded values are resolved before a row is written,
and their objects deleted once it is durable, before the ack (``offload``);
``kept_only`` leaves out the rows the workflow's filters dropped (their ids go to
``<out>.skipped``, so a restart skips them too).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import structlog

from matrix_p2p import envelope
from matrix_p2p.aio import pause
from matrix_p2p.backoff import Retrying
from matrix_p2p.bus import Bus, Delivery
from matrix_p2p.envelope import EnvelopeError, Task, Usage
from matrix_p2p.errors import BusError
from matrix_p2p.liveness import heal
from matrix_p2p.metrics import NullMetrics, Recorder
from matrix_p2p.runtime import offload, topology
from matrix_p2p.runtime.attempts import Latest, split_attempt
from matrix_p2p.runtime.files import (
    RowWriter,
    announced_children,
    check_writable,
    load_written_ids,
    out_format,
    read_lines,
    replace_file,
    staging_path,
    truncate_to,
    write_parquet,
)
from matrix_p2p.runtime.filter_counts import FilterCounts
from matrix_p2p.runtime.sink_state import (
    Sidecar,
    keep_latest,
    load_sidecar,
    rebuild,
    save_sidecar,
    stream_identity,
    trust_reason,
)
from matrix_p2p.runtime.topology import Names
from matrix_p2p.workflow.spec import WorkflowSpec
from matrix_p2p.workflow.version import namespace_of

log = structlog.get_logger(__name__)

_row_encoder = msgspec.json.Encoder()
_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def to_row(task: Task) -> dict[str, Any]:
    """The dataset row of a finished task. A replay's usage, hops and timings count only
    the turns it added (its original's are in the original's row)."""
    replay = task.state.get("replay")
    from_turn = int(replay.get("from_turn", 0)) if isinstance(replay, dict) else 0
    from_hop = int(replay.get("from_hop", 0)) if isinstance(replay, dict) else 0
    own = task.turns[from_turn:]
    by_role: dict[str, float] = {}
    for t in own:
        by_role[t.role] = round(by_role.get(t.role, 0.0) + t.elapsed_s, 6)
    usage = {r: msgspec.structs.asdict(u)
             for r, u in msgspec.structs.replace(task, turns=own).usage_by_role().items()}
    usage["total"] = msgspec.structs.asdict(sum((t.usage for t in own), Usage()))
    finished = task.finished_at or 0.0
    return {
        "id": task.id,
        "workflow": task.workflow,
        "workflow_version": task.workflow_version,
        "code_version": task.code_version,
        "status": task.status,
        "error": task.error,
        "source": task.source,
        "row_index": task.row_index,
        "trial": task.trial,
        "input": task.row,
        "result": task.state,
        "dialogue": [
            {
                "role": t.role,
                "content": t.content,
                "hop": t.hop,
                "usage": msgspec.structs.asdict(t.usage),
                "elapsed_s": t.elapsed_s,
                "endpoint": t.endpoint,
                "model": t.model,
                "finish_reason": t.finish_reason,
                **({"messages": t.messages} if t.messages is not None else {}),
                **({"meta": t.meta} if t.meta else {}),
            }
            for t in task.turns
        ],
        "usage": usage,
        "timings": {
            "created_at": task.created_at,
            "finished_at": task.finished_at,
            "elapsed_s": round(finished - task.created_at, 6) if finished else None,
            "by_role": by_role,
        },
        "hops": task.hop - from_hop,
        **({"parent": task.parent} if task.parent is not None else {}),
        **({"children": task.state["children"]} if "children" in task.state else {}),
    }


def sink_name(out: Path) -> str:
    """The dataset's name: the output's file name without its format extensions."""
    name = out.name
    for ext in (".zst", ".jsonl", ".parquet", ".json"):
        name = name.removesuffix(ext)
    return name or "out"


def sink_durable(out: Path) -> str:
    """The sink's consumer, keyed on the dataset (the workflow's results stream and the
    output's name), not on its absolute path: moving the directory or running from
    elsewhere keeps the progress. Two sinks of one workflow writing files of the same
    name at once must pass distinct ``--durable`` names."""
    return "sink-" + _SAFE.sub("_", sink_name(out))[:64]


class Sink:
    """Writes the results of one workflow to ``out``. One instance per output file.

    Keeps the latest attempt of each task (``runtime/attempts.py``); the file is
    rebuilt from the results stream when it cannot be trusted (``sink_state.py``).
    """

    def __init__(self, bus: Bus, spec: WorkflowSpec, out: Path, *, fmt: str | None = None,
                 durable: str | None = None, replicas: int | None = None,
                 namespace: str | None = None, kept_only: bool = False,
                 metrics: Recorder | None = None) -> None:
        self.bus = bus
        self.spec = spec
        self.out = out
        self.fmt = fmt or out_format(out, spec)
        check_writable(out if self.fmt != "parquet" else staging_path(out, self.fmt))
        self.staging = staging_path(out, self.fmt)
        self.names = Names.of(spec)
        self.durable = durable or sink_durable(out)
        self.latest = Latest()
        self.written: set[str] = set()
        self.done = 0
        self.failed = 0
        self.duplicates = 0
        self.changed = asyncio.Event()
        self.replicas = replicas
        # a code version's id namespace (workflow/version.py): other versions' rows are
        # not this dataset's; None takes every result
        self.namespace = namespace
        self._side: Sidecar | None = None
        self.offload = offload.Offloader(bus, spec)
        self.counts = FilterCounts()
        self.announced = 0  # children the written parents spawned (fan-out)
        # kept-only: the ids of the rows left out go to a side file, so a restart skips them
        self.skipped_path = (out.with_name(out.name + ".skipped")
                             if kept_only or spec.sink.kept_only else None)
        self.metrics = metrics or NullMetrics()
        self.beat: Callable[[], None] = lambda: None  # systemd watchdog: the fetch loop turns
        # results its consumer will not deliver are read back (``liveness``; None: the defaults)
        self.liveness: heal.LivenessOptions | None = None

    @property
    def count(self) -> int:
        """Distinct tasks in the file (each task's latest attempt)."""
        return len(self.latest.by_base)

    def has(self, task_id: str) -> bool:
        return task_id in self.written

    def finished(self, expected: int) -> bool:
        """Every one of ``expected`` submitted tasks is written, and every child a
        written parent announced (fan-out: ids ``<parent>/<i>``; submitted ids have no
        ``/``). Counted over this output, across restarts."""
        children = sum(1 for i in self.written if "/" in i)
        return len(self.written) - children >= expected and children >= self.announced

    def accepts(self, task_id: str) -> bool:
        return self.namespace is None or namespace_of(task_id) == self.namespace

    async def _open(self) -> None:
        """Trust the file as the sidecar describes it, or rebuild it from the stream."""
        identity = await stream_identity(self.bus, self.names)
        side = load_sidecar(self.out)
        why = trust_reason(side, self.staging, identity=identity, fmt=self.fmt,
                           stream=self.names.results_stream, namespace=self.namespace)
        if why is None and side is not None:
            truncate_to(self.staging, side.good_length)
            for ln in read_lines(self.staging, self.fmt):
                row = msgspec.json.decode(ln)
                self.latest.offer(row["id"], row["status"])
            good = side.good_length
        else:
            fresh = side is None and not self.staging.exists()
            (log.info if fresh else log.warning)("sink.rebuild", out=str(self.out), reason=why)
            # offloaded values are read back; those of results written (and their objects
            # deleted) before the file was lost stay references
            left_out: list[Task] = []  # kept-only: recorded in the side file below

            def line(t: Task) -> bytes:
                if self.skipped_path is None or is_kept(t):
                    return _row_encoder.encode(to_row(t)) + b"\n"
                left_out.append(t)
                return b""

            good = await rebuild(self.bus, self.names, self.staging, self.fmt, line,
                                 self.latest, accept=self.accepts, prepare=self._resolve)
            if self.skipped_path is not None:
                side_file = RowWriter(self.skipped_path, "jsonl")
                for t in left_out:
                    side_file.write(_skipped_line(t))
                side_file.close()
        if self.skipped_path is not None:
            for tid in load_written_ids(self.skipped_path):
                self.latest.offer(tid, "done")
            self.announced += announced_children(self.skipped_path)
        self.announced += announced_children(self.staging, self.fmt)
        self.written = self.latest.ids()
        self._side = Sidecar(workflow=self.spec.name, stream=self.names.results_stream,
                             identity=identity, format=self.fmt, count=self.count,
                             good_length=good, namespace=self.namespace)
        save_sidecar(self.out, self._side)

    async def _commit(self, writer: RowWriter, superseded: bool) -> RowWriter:
        """Make the batch durable, then record it in the sidecar (before any ack)."""
        writer.commit()
        if superseded:  # an earlier attempt's row leaves the file: rewrite it atomically
            writer.close()
            lines = keep_latest(read_lines(self.staging, self.fmt), self.written)
            replace_file(self.staging, lines, self.fmt)
            writer = RowWriter(self.staging, self.fmt)
        assert self._side is not None
        if not self._side.identity:
            self._side.identity = await stream_identity(self.bus, self.names)
        self._side.count, self._side.good_length = self.count, writer.good_length
        save_sidecar(self.out, self._side)
        return writer

    async def run(self, stop: asyncio.Event, *, expect: int | None = None,
                  ready: asyncio.Event | None = None) -> int:
        """Write results until ``stop`` (or until ``expect`` distinct tasks are written).

        Error handling: an undecodable result is dead-lettered and terminated;
        bus errors are logged and the fetch retried with backoff; a write error
        (disk full) propagates, leaving the batch unacked for redelivery.
        """
        await topology.ensure_workflow(self.bus, self.spec, roles=(), replicas=self.replicas,
                                       results_consumers=[self.durable])
        await self._open()
        puller = heal.for_sink(self.bus, self.names, self.durable, self.liveness,
                               metrics=self.metrics).wrap(
            await self.bus.puller(self.names.results_stream, self.durable))
        writer = RowWriter(self.staging, self.fmt)
        skipped = RowWriter(self.skipped_path, "jsonl") if self.skipped_path else None
        self.changed.set()
        if ready is not None:
            ready.set()
        backoff = Retrying(0.1, 5.0)
        try:
            while not stop.is_set():
                self.beat()
                if expect is not None and self.count >= expect:
                    break
                try:
                    batch = await puller.fetch(512, 1.0)
                except BusError as exc:
                    delay = backoff.next()
                    log.warning("sink.fetch_failed", error=str(exc), retry_in_s=round(delay, 2))
                    await pause(delay, stop)
                    continue
                backoff.reset()
                if not batch:
                    continue
                keep: list[tuple[Delivery, Task | None]] = []
                superseded = False
                fresh: list[tuple[str, bool]] = []  # finished tasks: status, row written
                for d in batch:
                    try:
                        task = envelope.decode(d.data)
                    except EnvelopeError as exc:
                        try:
                            await topology.dead_letter(self.bus, self.names, d.data,
                                                       reason=str(exc), subject=d.subject)
                        except BusError as exc2:
                            # not kept yet: leave it for redelivery rather than lose it
                            log.warning("sink.dead_letter_failed", error=str(exc2))
                            continue
                        await d.term()
                        self.metrics.dead_lettered("sink")
                        continue
                    if not self.accepts(task.id):
                        keep.append((d, None))  # another code version's result
                        continue
                    if task.id not in self.written and not await self._resolve(task):
                        continue  # its offloaded values cannot be read now: redelivered later
                    prev = self.latest.by_base.get(split_attempt(task.id)[0])
                    verdict = self.latest.offer(task.id, task.status)
                    if verdict in ("duplicate", "stale"):
                        self.duplicates += 1
                    else:
                        if prev is not None:  # an earlier attempt of this task
                            self.written.discard(prev[1])
                            superseded = True
                        self.written.add(task.id)
                        self._write(task, writer, skipped)
                        fresh.append((task.status, skipped is None or is_kept(task)))
                    keep.append((d, task))
                if skipped is not None:
                    skipped.commit()
                writer = await self._commit(writer, superseded)  # durable before the acks
                self.metrics.sink_rows_written(sum(written for _, written in fresh))
                for status, _ in fresh:
                    self.metrics.task_finished(status)
                for d, done_task in keep:
                    if done_task is not None:
                        try:  # on disk now: its objects can go
                            await self.offload.delete_all(done_task)
                        except BusError as exc:
                            log.warning("sink.offload_delete_failed", task=done_task.id,
                                        error=str(exc))
                            continue  # unacked: redelivered, a duplicate then, deleted again
                    await d.ack()
                self.changed.set()
        finally:
            writer.close()
            if skipped is not None:
                skipped.close()
            await puller.unsubscribe()
            if self.fmt == "parquet":
                write_parquet(self.staging, self.out)
        return self.count


    async def _resolve(self, task: Task) -> bool:
        """Its offloaded values back in place; False if the store cannot be read now."""
        if self.skipped_path is not None and not is_kept(task):
            return True  # not written: nothing to read
        try:
            await self.offload.load(task, missing_ok=True)
        except BusError as exc:
            log.warning("sink.offload_read_failed", task=task.id, error=str(exc))
            return False
        if offload.refs(task):
            log.warning("sink.offloaded_value_missing", task=task.id)
        return True

    def _write(self, task: Task, writer: RowWriter, skipped: RowWriter | None) -> None:
        """The row (kept-only: a filtered task's id goes to the side file instead)."""
        if skipped is not None and not is_kept(task):
            skipped.write(_skipped_line(task))
        else:
            writer.write(_row_encoder.encode(to_row(task)) + b"\n")
        self.counts.add(task)
        self.announced += int(task.state.get("children", 0))
        if task.status == "done":
            self.done += 1
        else:
            self.failed += 1


def _skipped_line(task: Task) -> bytes:
    return _row_encoder.encode({
        "id": task.id, "status": task.status,
        **({"children": task.state["children"]} if "children" in task.state else {}),
    }) + b"\n"


def is_kept(task: Task) -> bool:
    """The ``--kept-only`` test: done, and the workflow's filters kept it."""
    return (task.status == "done" and task.state.get("kept") is True
            and "children" not in task.state)  # a fanned-out parent: its children are the rows
