"""Guards of large-payload offload (``make mutate`` breaks each):

- ``objects_deleted_only_after_the_row_is_durable``: the sink deletes a task's objects
  after its row is fsynced and before its result is acked (a crash before the fsync
  redelivers the result, and its values must still be there to write the row);
- ``failed_put_retries_the_hop``: a hop whose put fails publishes nothing (no envelope
  names an object that is not there): it runs again, and the task ends once, whole;
- ``failed_delete_leaves_the_result_unacked``: when a delete fails the result is not
  acked: it comes back, is a duplicate then, and its objects are deleted that time;
- ``default_threshold_fits_the_broker``: with the default ``limits.offload_bytes``, a
  row whose values together exceed NATS's default ``max_payload`` (1 MB), each value
  under it, goes through.

The order is read from the fault bus's trace (``FaultyBus.order``): its object store
points (``obj.put``, ``obj.delete``) and ``record_fsyncs``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from matrix_p2p import envelope
from matrix_p2p.bus import MemoryBus
from matrix_p2p.bus.memory import DEFAULT_MAX_PAYLOAD
from matrix_p2p.envelope import Task
from matrix_p2p.runtime.offload import Offloader
from matrix_p2p.runtime.sink import Sink
from matrix_p2p.runtime.source import submit
from matrix_p2p.runtime.topology import Names, ensure_workflow
from matrix_p2p.workflow.spec import WorkflowSpec
from tests.conftest import make_spec
from tests.fault_rig import Clock, Rig, stored, worker
from tests.faults import Fault, record_fsyncs
from tests.integration.helpers import read_rows, run_until
from tests.integration.test_edge_faults import result, running_sink
from tests.invariants import assert_file_once, wait_finished

OFFLOADING = """
roles: {a: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}}
routing: {type: cycle, roles: [a], max_turns: 1}
limits: {offload_bytes: 1024, ack_wait_s: 5}
"""


@pytest.fixture
async def mem() -> AsyncIterator[Rig]:
    clock = Clock()
    r = Rig(MemoryBus(clock=clock), clock)
    yield r
    await r.bus.close()


async def big_result(bus: MemoryBus, spec: WorkflowSpec, tid: str) -> Task:
    """A finished task whose two big values were offloaded by its last hop."""
    t = result(spec, tid)
    t.row["text"] = "x" * 5000
    t.state["notes"] = "y" * 3000
    await Offloader(bus, spec).store(t)
    assert len(t.objects) == 2
    return t


async def setup(rig: Rig, tmp_path: Path) -> tuple[WorkflowSpec, Names, dict[str, bytes]]:
    spec = make_spec(tmp_path, OFFLOADING, [])
    names = await ensure_workflow(rig.bus, spec)
    assert isinstance(rig.bus, MemoryBus)
    return spec, names, rig.bus.objects.setdefault(names.objects_bucket, {})


async def test_guard_objects_deleted_only_after_the_row_is_durable(
        mem: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, names, objects = await setup(mem, tmp_path)
    assert isinstance(mem.bus, MemoryBus)
    faulty = mem.faulty()
    record_fsyncs(monkeypatch, faulty)
    out = tmp_path / "out.jsonl"
    async with asyncio.timeout(5), running_sink(Sink(faulty, spec, out), expect=2):
        for tid in ("t1", "t2"):
            await mem.bus.publish(names.done, envelope.encode(await big_result(mem.bus, spec, tid)))
    steps = faulty.order("delivered", "fsync", "obj.delete", "ack")
    for tid in ("t1", "t2"):
        got = steps.index(f"delivered {tid}")
        deletes = [i for i, s in enumerate(steps) if s == f"obj.delete {tid}"]
        acked = steps.index(f"ack {tid}")
        assert len(deletes) == 2, steps
        assert "fsync out.jsonl" in steps[got:deletes[0]], f"{tid}: deleted before the fsync: {steps}"
        assert deletes[-1] < acked, f"{tid}: acked before its objects were deleted: {steps}"
    rows = assert_file_once(out, ["t1", "t2"], step="offloaded results")
    assert all(r["input"]["text"] == "x" * 5000 for r in rows)  # type: ignore[index]
    assert objects == {}


GROWING = """
source: {path: rows.jsonl}
roles:
  a: {agent: "tests.guard_agents:Grow", llm: null}
  b: {agent: "tests.guard_agents:Grow", llm: null}
routing: {type: cycle, roles: [a, b], max_turns: 2}
limits: {offload_bytes: 1024, ack_wait_s: 5, retry_backoff_s: 0.01}
"""


async def test_guard_failed_put_retries_the_hop(mem: Rig, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, GROWING, [{"n": 1}])
    await submit(mem.bus, spec)
    names = Names.of(spec)
    [tid] = [t.id for t in await stored(mem.bus, names.tasks_stream)]
    faulty = mem.faulty(Fault(point="obj.put", do="fail", task=tid))  # role a's first put
    async with worker(faulty, spec):
        [done] = await wait_finished(mem.bus, names, [tid], step="a failed put", hops=2,
                                     status="done", trace=mem.trace)
    steps = faulty.order("obj.put", "published", "nak")
    assert steps[:4] == [f"obj.put {tid}", f"nak {tid}", f"obj.put {tid}", f"published {tid}"], steps
    await Offloader(mem.bus, spec).load(done)
    assert (done.state["notes0"], done.state["notes1"]) == ("0" * 5000, "1" * 5000)


async def test_guard_failed_delete_leaves_the_result_unacked(mem: Rig, tmp_path: Path) -> None:
    spec, names, objects = await setup(mem, tmp_path)
    assert isinstance(mem.bus, MemoryBus)
    out = tmp_path / "out.jsonl"
    first = Sink(mem.faulty(Fault(point="obj.delete", do="fail", task="t1"), ack_wait_s=5),
                 spec, out)
    async with asyncio.timeout(5), running_sink(first, expect=1):
        await mem.bus.publish(names.done, envelope.encode(await big_result(mem.bus, spec, "t1")))
    # the row is durable, the delete failed: the result stays unacked, its objects stay
    stats = await mem.bus.consumer_stats(names.results_stream, first.durable)
    assert stats is not None and stats.ack_pending == 1, "acked although its objects remain"
    assert len(objects) == 2
    await mem.expire(5.0)  # its ack_wait runs out: redelivered to the next sink
    again = mem.faulty()
    stop = asyncio.Event()
    run = asyncio.create_task(Sink(again, spec, out).run(stop))
    await again.wait_for(lambda trace: any(s.point == "ack" and s.task == "t1" for s in trace),
                         "the redelivered result acked")
    stop.set()
    await run
    assert objects == {}
    assert_file_once(out, ["t1"], step="a failed delete, then the redelivery")


DEFAULTS = """
source: {path: rows.jsonl}
roles: {a: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}}
routing: {type: cycle, roles: [a], max_turns: 1}
limits: {ack_wait_s: 5}
"""


async def test_guard_default_threshold_fits_the_broker(tmp_path: Path) -> None:
    part = 400 * 1024  # three values of 400 KB: each under max_payload, together over it
    row = {"a": "a" * part, "b": "b" * part, "c": "c" * part}
    spec = make_spec(tmp_path, DEFAULTS, [row])
    bus = MemoryBus()  # NATS's default max_payload
    assert bus.max_payload == DEFAULT_MAX_PAYLOAD == 1024 * 1024
    try:
        await run_until(bus, spec, tmp_path / "out.jsonl", expect=1, deadline_s=20)
    finally:
        await bus.close()
    [got] = read_rows(tmp_path / "out.jsonl")
    assert got["status"] == "done", got["error"]
    assert got["input"] == row
