"""Sinks: finished tasks from the results stream become dataset rows, each task once.

The sink's durable consumer resumes where it stopped. Rows are written and
flushed to disk (fsync) before their messages are acked; a crash in between
redelivers them, and the ids already in the output file are skipped. A torn
last line from a crash mid-write is cut off at start-up.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import structlog

from matrix_p2p import envelope
from matrix_p2p.aio import pause
from matrix_p2p.backoff import Retrying
from matrix_p2p.bus import Bus
from matrix_p2p.envelope import EnvelopeError, Task
from matrix_p2p.errors import BusError
from matrix_p2p.metrics import NullMetrics, Recorder
from matrix_p2p.runtime import topology
from matrix_p2p.runtime.files import RowWriter, load_written_ids, write_parquet
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
    }


def sink_durable(out: Path) -> str:
    return "sink-" + hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:10]


class Sink:
    """Writes the results of one workflow to ``out``. One instance per output file."""

    def __init__(self, bus: Bus, spec: WorkflowSpec, out: Path, *, fmt: str | None = None,
                 durable: str | None = None, replicas: int | None = None,
                 metrics: Recorder | None = None) -> None:
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
        self.metrics = metrics or NullMetrics()
        self.beat: Callable[[], None] = lambda: None  # systemd watchdog: the fetch loop turns

    @property
    def count(self) -> int:
        return len(self.written)

    async def run(self, stop: asyncio.Event, *, expect: int | None = None,
                  ready: asyncio.Event | None = None) -> int:
        """Write results until ``stop`` (or until ``expect`` distinct tasks are written).

        Error handling: an undecodable result is dead-lettered and terminated;
        bus errors are logged and the fetch retried with backoff; a write error
        (disk full) propagates, leaving the batch unacked for redelivery.
        """
        self.written = load_written_ids(self.out, self.fmt)
        await topology.ensure_workflow(self.bus, self.spec, roles=(), replicas=self.replicas,
                                       results_consumers=[self.durable])
        puller = await self.bus.puller(self.names.results_stream, self.durable)
        writer = RowWriter(self.out, self.fmt)
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
                keep = []
                fresh: list[str] = []  # statuses of the rows written from this batch
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
                    if task.id in self.written:
                        self.duplicates += 1
                    else:
                        self.written.add(task.id)
                        writer.write(_row_encoder.encode(to_row(task)) + b"\n")
                        fresh.append(task.status)
                        if task.status == "done":
                            self.done += 1
                        else:
                            self.failed += 1
                    keep.append(d)
                writer.commit()  # durable before the acks
                self.metrics.sink_rows_written(len(fresh))
                for status in fresh:
                    self.metrics.task_finished(status)
                for d in keep:
                    await d.ack()
                self.changed.set()
        finally:
            writer.close()
            await puller.unsubscribe()
            if self.parquet_out is not None:
                write_parquet(self.out, self.parquet_out)
        return self.count
