"""Sinks: finished tasks from the results stream become dataset rows, each task once.

The sink's durable consumer resumes where it stopped. Rows are written and
flushed to disk (fsync) before their messages are acked; a crash in between
redelivers them, and the ids already in the output file are skipped (offloaded values
are resolved before the write and their objects deleted after it: ``offload``). A torn
last line from a crash mid-write is cut off at start-up.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import msgspec
import structlog

from matrix_p2p import envelope
from matrix_p2p.aio import pause
from matrix_p2p.backoff import Retrying
from matrix_p2p.bus import Bus, Delivery
from matrix_p2p.envelope import EnvelopeError, Task
from matrix_p2p.errors import BusError
from matrix_p2p.runtime import offload, topology
from matrix_p2p.runtime.files import RowWriter, announced_children, load_written_ids, write_parquet
from matrix_p2p.runtime.filter_counts import FilterCounts
from matrix_p2p.runtime.topology import Names
from matrix_p2p.workflow.spec import WorkflowSpec

log = structlog.get_logger(__name__)

_row_encoder = msgspec.json.Encoder()


def to_row(task: Task) -> dict[str, Any]:
    """The dataset row of a finished task."""
    by_role: dict[str, float] = {}
    for t in task.turns:
        by_role[t.role] = round(by_role.get(t.role, 0.0) + t.elapsed_s, 6)
    usage = {r: msgspec.structs.asdict(u) for r, u in task.usage_by_role().items()}
    usage["total"] = msgspec.structs.asdict(task.usage())
    finished = task.finished_at or 0.0
    return {
        "id": task.id,
        "workflow": task.workflow,
        "workflow_version": task.workflow_version,
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
        "hops": task.hop,
        **({"parent": task.parent} if task.parent is not None else {}),
        **({"children": task.state["children"]} if "children" in task.state else {}),
    }


def sink_durable(out: Path) -> str:
    return "sink-" + hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:10]


class Sink:
    """Writes the results of one workflow to ``out``. One instance per output file."""

    def __init__(self, bus: Bus, spec: WorkflowSpec, out: Path, *, fmt: str | None = None,
                 durable: str | None = None, replicas: int | None = None,
                 kept_only: bool = False) -> None:
        self.bus = bus
        self.spec = spec
        self.out = out
        self.fmt = fmt or ("jsonl.zst" if out.suffix == ".zst" else spec.sink.format)
        if self.fmt == "parquet":
            self.fmt = "jsonl"  # parquet is written from the JSONL at close (not appendable)
            self.parquet_out: Path | None = out
            self.out = out.with_suffix(".jsonl")
        else:
            self.parquet_out = None
        self.names = Names.of(spec)
        self.durable = durable or sink_durable(self.out)
        self.written: set[str] = set()
        self.done = 0
        self.failed = 0
        self.duplicates = 0
        self.changed = asyncio.Event()
        self.replicas = replicas
        self.offload = offload.Offloader(bus, spec)
        self.counts = FilterCounts()
        self.announced = 0  # children the written parents spawned (fan-out)
        # kept-only: the ids of the rows left out go to a side file, so a restart skips them
        self.skipped_path = (self.out.with_name(self.out.name + ".skipped")
                             if kept_only or spec.sink.kept_only else None)

    @property
    def count(self) -> int:
        return len(self.written)

    def finished(self, expected: int) -> bool:
        """Every one of ``expected`` submitted tasks is written, and every child a
        written parent announced (fan-out: ids ``<parent>/<i>``; submitted ids have no
        ``/``). Counted over this output file, across restarts."""
        children = sum(1 for i in self.written if "/" in i)
        return len(self.written) - children >= expected and children >= self.announced

    async def run(self, stop: asyncio.Event, *, expect: int | None = None,
                  ready: asyncio.Event | None = None) -> int:
        """Write results until ``stop`` (or until ``expect`` distinct tasks are written).

        Error handling: an undecodable result is dead-lettered and terminated;
        bus errors are logged and the fetch retried with backoff; a write error
        (disk full) propagates, leaving the batch unacked for redelivery.
        """
        self.written = load_written_ids(self.out, self.fmt)
        self.announced = announced_children(self.out, self.fmt)
        await topology.ensure_workflow(self.bus, self.spec, roles=(), replicas=self.replicas,
                                       results_consumers=[self.durable])
        puller = await self.bus.puller(self.names.results_stream, self.durable)
        writer = RowWriter(self.out, self.fmt)
        skipped = RowWriter(self.skipped_path, "jsonl") if self.skipped_path else None
        if self.skipped_path is not None:
            self.written |= load_written_ids(self.skipped_path)
            self.announced += announced_children(self.skipped_path)
        if ready is not None:
            ready.set()
        backoff = Retrying(0.1, 5.0)
        try:
            while not stop.is_set():
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
                keep: list[tuple[Delivery, Task]] = []
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
                        continue
                    if task.id in self.written:
                        self.duplicates += 1
                    elif not await self._write(task, writer, skipped):
                        continue  # its offloaded values could not be read: redelivered later
                    keep.append((d, task))
                writer.commit()  # durable before the deletes and the acks
                if skipped is not None:
                    skipped.commit()
                for d, task in keep:
                    try:
                        await self.offload.delete_all(task)  # on disk now: the objects can go
                    except BusError as exc:
                        log.warning("sink.offload_delete_failed", task=task.id, error=str(exc))
                        continue  # unacked: redelivered, a duplicate then, deleted again
                    await d.ack()
                self.changed.set()
        finally:
            writer.close()
            if skipped is not None:
                skipped.close()
            await puller.unsubscribe()
            if self.parquet_out is not None:
                write_parquet(self.out, self.parquet_out)
        return self.count

    async def _write(self, task: Task, writer: RowWriter, skipped: RowWriter | None) -> bool:
        """Write the row of a task not written before (kept-only: or its id to the side
        file); False if its offloaded values cannot be read now."""
        if skipped is not None and not is_kept(task):
            skipped.write(_row_encoder.encode({
                "id": task.id, "status": task.status,
                **({"children": task.state["children"]} if "children" in task.state else {}),
            }) + b"\n")
        else:
            try:
                await self.offload.load(task, missing_ok=True)
            except BusError as exc:
                log.warning("sink.offload_read_failed", task=task.id, error=str(exc))
                return False
            if offload.refs(task):
                log.warning("sink.offloaded_value_missing", task=task.id)
            writer.write(_row_encoder.encode(to_row(task)) + b"\n")
        self.written.add(task.id)
        self.counts.add(task)
        self.announced += int(task.state.get("children", 0))
        if task.status == "done":
            self.done += 1
        else:
            self.failed += 1
        return True


def is_kept(task: Task) -> bool:
    """The ``--kept-only`` test: done, and the workflow's filters kept it."""
    return (task.status == "done" and task.state.get("kept") is True
            and "children" not in task.state)  # a fanned-out parent: its children are the rows
