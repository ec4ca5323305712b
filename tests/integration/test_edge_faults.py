"""Faults at the two ends of the data path, on the in-memory bus and on a real nats-server.

The sink: duplicate results, garbage on the results subjects, a crash between
writing (fsync) and acking. The source: a resubmission, a crash mid-submit.
Each ends with the invariant read from the output file or the results stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from matrix_p2p import envelope
from matrix_p2p.envelope import Task
from matrix_p2p.runtime.sink import Sink
from matrix_p2p.runtime.source import submit
from matrix_p2p.runtime.topology import Names, ensure_workflow
from matrix_p2p.workflow.spec import WorkflowSpec
from tests.conftest import make_spec
from tests.fault_rig import HOPS, TWO_ROLES, Rig, stored, worker
from tests.faults import Fault, until_crash
from tests.invariants import assert_file_once, assert_no_task_lost, wait_finished


def result(spec: WorkflowSpec, tid: str, status: str = "done") -> Task:
    t = envelope.new_task(task_id=tid, workflow=spec.name, role="a", row={"id": tid})
    t.status = status  # type: ignore[assignment]
    t.hop = HOPS
    t.finished_at = t.created_at
    if status == "failed":
        t.error = "it failed"
    return t


async def results_setup(rig: Rig, tmp_path: Path) -> tuple[WorkflowSpec, Names]:
    spec = make_spec(tmp_path, TWO_ROLES, [])
    return spec, await ensure_workflow(rig.bus, spec)


@asynccontextmanager
async def running_sink(sink: Sink, expect: int) -> AsyncIterator[None]:
    """The sink runs (its start-up rebuild from the stream done) while the block
    publishes, so what the block publishes goes through its consumer; ends when
    ``expect`` tasks are written."""
    ready = asyncio.Event()
    run = asyncio.create_task(sink.run(asyncio.Event(), expect=expect, ready=ready))
    await ready.wait()
    yield
    await run


async def test_sink_writes_a_duplicate_result_once(rig: Rig, tmp_path: Path) -> None:
    """Guard: sink dedup (the results stream holds t1 twice: a republish past the
    dedup window, a replay; the dataset holds it once)."""
    spec, names = await results_setup(rig, tmp_path)
    out = tmp_path / "out.jsonl"
    sink = Sink(rig.faulty(), spec, out)
    async with asyncio.timeout(5):
        async with running_sink(sink, expect=2):
            for tid in ("t1", "t1", "t2"):  # no msg-id: the stream keeps both copies of t1
                await rig.bus.publish(names.done, envelope.encode(result(spec, tid)))
    assert_file_once(out, ["t1", "t2"], step="a duplicate result")
    assert sink.duplicates == 1


async def test_sink_dead_letters_garbage_on_the_results_subjects(rig: Rig, tmp_path: Path) -> None:
    """Guard: dead-lettering on the sink's consumer (kept with its reason, termed, and
    the sink goes on)."""
    spec, names = await results_setup(rig, tmp_path)
    out = tmp_path / "out.jsonl"
    faulty = rig.faulty()
    sink = Sink(faulty, spec, out)
    async with asyncio.timeout(5):
        async with running_sink(sink, expect=1):
            await rig.bus.publish(names.failed, b"\xc1not an envelope")
            await rig.bus.publish(names.done, envelope.encode(result(spec, "t1")))
    assert_file_once(out, ["t1"], step="garbage on the results subject")
    dead = [m async for m in rig.bus.iter_stream(names.dlq_stream)]
    assert len(dead) == 1, f"garbage on {names.failed} was not dead-lettered: {dead}"
    assert dead[0].data == b"\xc1not an envelope"
    assert dead[0].headers["Mx-Subject"] == names.failed
    assert dead[0].headers["Mx-Reason"].startswith("undecodable envelope (16 bytes)")
    assert [s.point for s in faulty.trace if s.subject == names.failed] == ["delivered", "term"]


async def test_sink_crash_between_writing_and_acking(rig: Rig, tmp_path: Path) -> None:
    """Guard: sink dedup across a restart (rows fsynced, acks never sent: the results
    come back to the restarted sink, which finds their ids in the file)."""
    spec, names = await results_setup(rig, tmp_path)
    ids = ["t1", "t2", "t3"]
    for tid in ids:
        await rig.bus.publish(names.done, envelope.encode(result(spec, tid)), msg_id=f"{tid}:3")
    out = tmp_path / "out.jsonl"
    crashing = rig.faulty(Fault(point="ack", subject=names.done), ack_wait_s=1.0)
    await until_crash(Sink(crashing, spec, out).run(asyncio.Event()), crashing)
    written = assert_file_once(out, [str(s.task) for s in crashing.trace if s.point == "delivered"],
                               step="a sink crash before its acks")
    assert written, "the crashed sink wrote nothing before its first ack"
    await rig.expire()
    resumed = rig.faulty(ack_wait_s=1.0)
    resumed.trace = []
    sink = Sink(resumed, spec, out)
    stop = asyncio.Event()
    run = asyncio.create_task(sink.run(stop))
    try:
        await resumed.wait_for(lambda trace: {s.task for s in trace if s.point == "ack"} == set(ids),
                               "ack of every result by the restarted sink")
    finally:
        stop.set()
        async with asyncio.timeout(5):
            await run
    assert_file_once(out, ids, step="a sink crash between writing and acking, and a restart")
    assert sink.duplicates == len(written)


async def test_resubmitting_creates_nothing_new(rig: Rig, tmp_path: Path) -> None:
    """Guard: the source's submitted-ids record (and msg-id dedup beneath it)."""
    spec = make_spec(tmp_path, TWO_ROLES, [{"n": i} for i in range(3)])
    names = Names.of(spec)
    first = await submit(rig.bus, spec)
    ids = sorted(t.id for t in await stored(rig.bus, names.tasks_stream))
    async with worker(rig.faulty(), spec):
        await wait_finished(rig.bus, names, ids, step="the first run", hops=HOPS, status="done")
        again = await submit(rig.bus, spec)
        assert (first.submitted, again.submitted, again.already) == (3, 0, 3)
        await wait_finished(rig.bus, names, ids, step="a resubmission", hops=HOPS, status="done")


async def test_crash_mid_submit_then_resubmit(rig: Rig, tmp_path: Path) -> None:
    """Guard: msg-id dedup at the source (a task published but not yet recorded as
    submitted when the source died is published again; the broker drops the copy)."""
    spec = make_spec(tmp_path, TWO_ROLES, [{"n": i} for i in range(3)])
    names = Names.of(spec)
    crashing = rig.faulty(Fault(point="kv.create", skip=1))
    await until_crash(submit(crashing, spec, parallel=1), crashing)
    published = sorted({str(s.task) for s in crashing.trace if s.point == "published"})
    assert published, "the source crashed before publishing anything"
    await submit(rig.bus, spec)
    ids = sorted(t.id for t in await stored(rig.bus, names.tasks_stream))
    assert len(ids) == 3, f"the task stream holds {ids} after a crash mid-submit and a resubmit"
    await assert_no_task_lost(rig.bus, names, ids, step="a crash mid-submit")
    async with worker(rig.faulty(), spec):
        await wait_finished(rig.bus, names, ids, step="a crash mid-submit and a resubmit",
                            hops=HOPS, status="done", trace=crashing.trace)
