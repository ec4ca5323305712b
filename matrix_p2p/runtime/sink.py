"""Sinks: finished tasks from the results stream become dataset rows, each task once.

The sink's durable consumer (named after the dataset, not the output path)
resumes where it stopped. Rows are appended and flushed to disk (fsync), and
the file's good length recorded in a sidecar, before their messages are
acked; a crash in between redelivers them, the ids already in the file are
skipped, and whatever lies past the good length (a torn row) is cut off at
start-up. A file that was deleted, truncated, written by another run or holding
a task twice is rebuilt from the results stream (``sink_state.py``). One writer
per output: ``run`` holds ``files.OutputLock``. Parquet is not appendable: rows
collect in ``<out>.mx.jsonl`` and become ``<out>`` at close, by temp file and
rename. The format follows ``out``'s extension (``files.out_format``).
Offloaded values are resolved before a row is written, and their objects
deleted once it is durable, before the ack (``offload``);
``kept_only`` leaves out the rows the workflow's filters dropped (their ids go to
``<out>.skipped``, so a restart skips them too).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import msgspec
import structlog

from matrix_p2p import envelope
from matrix_p2p.aio import pause
from matrix_p2p.backoff import Retrying
from matrix_p2p.bus import Bus, Delivery
from matrix_p2p.envelope import EnvelopeError, Task
from matrix_p2p.errors import BusError
from matrix_p2p.liveness import heal
from matrix_p2p.metrics import NullMetrics, Recorder
from matrix_p2p.report.figures import Figures
from matrix_p2p.runset.completion import Completion, add_lines
from matrix_p2p.runset.taskset import TaskSet
from matrix_p2p.runtime import offload, topology
from matrix_p2p.runtime.attempts import Latest, split_attempt
from matrix_p2p.runtime.files import (
    OutputLock,
    RowWriter,
    announced_children,
    load_written_ids,
    out_format,
    read_lines,
    replace_file,
    staging_path,
    truncate_to,
    write_parquet,
)
from matrix_p2p.runtime.filter_counts import FilterCounts
from matrix_p2p.runtime.rowformat import is_kept, row_encoder, skipped_line, to_row
from matrix_p2p.runtime.sink_state import (
    Sidecar,
    keep_latest,
    load_rows,
    load_sidecar,
    preserve_version,
    rebuild,
    save_sidecar,
    sink_name,
    stream_identity,
    trust_reason,
)
from matrix_p2p.runtime.topology import Names
from matrix_p2p.workflow.spec import WorkflowSpec
from matrix_p2p.workflow.version import namespace_of

log = structlog.get_logger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_-]")


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
                 metrics: Recorder | None = None, tasks: TaskSet | None = None,
                 lock: OutputLock | None = None) -> None:
        self.bus = bus
        self.spec = spec
        self.out = out
        self.fmt = fmt or out_format(out)
        self.staging = staging_path(out, self.fmt)
        # taken by run(); a caller that took it earlier passes it (and releases it)
        self.lock = lock or OutputLock(out, self.fmt)
        self._own_lock = lock is None
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
        # a run's task set (runset/): the output holds exactly these tasks, and the sink is
        # finished when each has its row; None: every result (of the namespace)
        self.tasks = tasks
        self.completion = Completion(tasks) if tasks is not None else None
        self.preserved: Path | None = None  # where an earlier code version's rows were moved
        self._side: Sidecar | None = None
        self.offload = offload.Offloader(bus, spec)
        self.counts = FilterCounts()
        self.figures = Figures(spec.summary)  # the workflow's own, over the output's rows
        self.left_out: set[str] = set()  # kept-only: ids in the side file, not the output
        self.rebuilt = 0  # tasks this run's rebuild of the file from the stream wrote
        self.announced = 0  # children the written parents spawned (fan-out)
        # kept-only: the ids of the rows left out go to a side file, so a restart skips them
        self.skipped_path = (out.with_name(out.name + ".skipped")
                             if kept_only or spec.sink.kept_only else None)
        self.metrics = metrics or NullMetrics()
        self.beat: Callable[[], None] = lambda: None  # systemd watchdog: the fetch loop turns
        # each task this sink writes (not those already in the file): `run` watches for a
        # broken run (runset/broken.py)
        self.on_written: Callable[[Task], object] = lambda task: None
        # results its consumer will not deliver are read back (``liveness``; None: the defaults)
        self.liveness: heal.LivenessOptions | None = None

    @property
    def count(self) -> int:
        """Distinct tasks in the file (each task's latest attempt)."""
        return len(self.latest.by_base)

    def has(self, task_id: str) -> bool:
        return task_id in self.written

    @property
    def file_rows(self) -> int:
        """Rows in the output file: the distinct tasks less those ``kept_only`` left out."""
        return len(self.written) - len(self.left_out & self.written)

    @property
    def children(self) -> int:
        """Fan-out children (ids ``<parent>/<i>``) among the distinct tasks."""
        return sum(1 for i in self.written if "/" in i)

    def finished(self, expected: int = 0) -> bool:
        """With a task set: every task of it has its row (the attempt the run waits for),
        and so has every child a written row announced. Without one: ``expected``
        submitted tasks are written, and as many children as were announced (fan-out:
        ids ``<parent>/<i>``; submitted ids have no ``/``). Over this output, across
        restarts."""
        if self.completion is not None:
            return self.completion.finished
        return len(self.written) - self.children >= expected and self.children >= self.announced

    def accepts(self, task_id: str) -> bool:
        if self.tasks is not None:
            return self.tasks.owns(task_id)
        return self.namespace is None or namespace_of(task_id) == self.namespace

    async def _open(self) -> None:
        """Trust the file as the sidecar describes it, or rebuild it from the stream."""
        identity = await stream_identity(self.bus, self.names)
        side = load_sidecar(self.out)
        digest = self.tasks.digest if self.tasks is not None else None
        why = trust_reason(side, self.staging, identity=identity, fmt=self.fmt,
                           stream=self.names.results_stream, namespace=self.namespace,
                           tasks=digest)
        if why is not None and side is not None and side.namespace != self.namespace:
            self.preserved = preserve_version(self.out, self.staging, self.fmt)
        if why is None and side is not None:
            truncate_to(self.staging, side.good_length)
            rows_read = read_lines(self.staging, self.fmt)
            why = load_rows(rows_read, self.latest)
            if why is None:
                self._refigure(rows_read)
            good = side.good_length
        if why is not None:
            self.latest.by_base.clear()  # what an untrusted file holds does not count
            fresh = side is None and not self.staging.exists()
            (log.info if fresh else log.warning)("sink.rebuild", out=str(self.out), reason=why)
            # offloaded values are read back; those of results written (and their objects
            # deleted) before the file was lost stay references
            left_out: list[Task] = []  # kept-only: recorded in the side file below

            def line(t: Task) -> bytes:
                if self.skipped_path is None or is_kept(t):
                    return row_encoder.encode(to_row(t)) + b"\n"
                left_out.append(t)
                return b""

            good = await rebuild(self.bus, self.names, self.staging, self.fmt, line,
                                 self.latest, accept=self.accepts, prepare=self._resolve)
            self.rebuilt = self.count
            self._refigure()
            if self.skipped_path is not None:
                side_file = RowWriter(self.skipped_path, "jsonl")
                for t in left_out:
                    side_file.write(skipped_line(t))
                side_file.close()
        if self.skipped_path is not None:
            for tid in load_written_ids(self.skipped_path):
                self.latest.offer(tid, "done")
                self.left_out.add(tid)
            self.announced += announced_children(self.skipped_path)
        self.announced += announced_children(self.staging, self.fmt)
        self.written = self.latest.ids()
        if self.completion is not None:
            self._complete_from_files()
        self._side = Sidecar(workflow=self.spec.name, stream=self.names.results_stream,
                             identity=identity, format=self.fmt, count=self.count,
                             good_length=good, namespace=self.namespace, tasks=digest)
        save_sidecar(self.out, self._side)

    def _refigure(self, lines: list[bytes] | None = None) -> None:
        """The workflow's figures over the whole file again (rebuilt, or rewritten
        without an earlier attempt's row); ``lines``: the file's, if already read."""
        self.figures = Figures(self.spec.summary)
        if self.spec.summary:
            for ln in read_lines(self.staging, self.fmt) if lines is None else lines:
                self.figures.add(msgspec.json.decode(ln))

    async def _commit(self, writer: RowWriter, superseded: bool) -> RowWriter:
        """Make the batch durable, then record it in the sidecar (before any ack)."""
        writer.commit()
        if superseded:  # an earlier attempt's row leaves the file: rewrite it atomically
            writer.close()
            lines = keep_latest(read_lines(self.staging, self.fmt), self.written)
            replace_file(self.staging, lines, self.fmt)
            self._refigure(lines)
            writer = RowWriter(self.staging, self.fmt)
        assert self._side is not None
        if not self._side.identity:
            self._side.identity = await stream_identity(self.bus, self.names)
        self._side.count, self._side.good_length = self.count, writer.good_length
        save_sidecar(self.out, self._side)
        return writer

    async def run(self, stop: asyncio.Event, *, expect: int | None = None,
                  ready: asyncio.Event | None = None) -> int:
        """``_run`` holding the output's lock from before the file is opened until it is
        closed: a second writer gets a one-line ``ConfigError`` before touching it."""
        self.lock.acquire()
        try:
            return await self._run(stop, expect=expect, ready=ready)
        finally:
            if self._own_lock:
                self.lock.release()

    async def _run(self, stop: asyncio.Event, *, expect: int | None = None,
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

    def _complete_from_files(self) -> None:
        """The rows the output (and the kept-only side file) holds, to the completion."""
        assert self.completion is not None
        add_lines(self.completion, read_lines(self.staging, self.fmt), self.written, rows=True)
        if self.skipped_path is not None:
            add_lines(self.completion, read_lines(self.skipped_path, "jsonl"), self.written,
                      rows=False)

    def _write(self, task: Task, writer: RowWriter, skipped: RowWriter | None) -> None:
        """The row (kept-only: a filtered task's id goes to the side file instead)."""
        if skipped is not None and not is_kept(task):
            skipped.write(skipped_line(task))
            self.left_out.add(task.id)
        else:
            row = to_row(task)
            writer.write(row_encoder.encode(row) + b"\n")
            self.figures.add(row)
        if self.completion is not None:
            self.completion.row(task.id, task.status, children=int(task.state.get("children", 0)),
                                kept=is_kept(task))
        self.counts.add(task)
        self.on_written(task)
        self.announced += int(task.state.get("children", 0))
        if task.status == "done":
            self.done += 1
        else:
            self.failed += 1
