"""The liveness check's I/O (``matrix_p2p.liveness.heal``) on the in-memory bus, with the
broker's defect played by ``MemoryBus.strand`` and time moved by hand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from matrix_p2p import envelope
from matrix_p2p.bus import MemoryBus
from matrix_p2p.liveness import heal
from matrix_p2p.liveness.heal import HealedDelivery, Healer
from matrix_p2p.metrics import Metrics
from matrix_p2p.runtime.sink import Sink
from matrix_p2p.runtime.topology import Names, ensure_workflow
from tests.conftest import make_spec
from tests.fault_rig import TWO_ROLES, Clock
from tests.integration.test_edge_faults import result


@pytest.fixture
async def mem() -> AsyncIterator[tuple[MemoryBus, Clock]]:
    clock = Clock()
    bus = MemoryBus(clock=clock)
    yield bus, clock
    await bus.close()


async def stranded(bus: MemoryBus, names: Names, task: str = "t1") -> int:
    """One task on role a that the consumer delivered and then forgot (no ack, no redelivery)."""
    t = envelope.new_task(task_id=task, workflow=names.workflow, role="a", row={})
    await bus.publish(names.task("a"), envelope.encode(t), msg_id=f"{task}:0")
    puller = await bus.puller(names.tasks_stream, "a")
    [d] = await puller.fetch(1, 0.1)
    m = await bus.stored(names.tasks_stream, 1)
    assert m is not None and d.data == m.data
    bus.strand(names.tasks_stream, "a", m)
    assert not await puller.fetch(1, 0.01)
    return m.seq


async def checks(healer: Healer, clock: Clock, n: int = 3) -> heal.Verdict | None:
    """``n`` checks, one ``interval_s`` apart (moved by hand); the last one's verdict."""
    v = None
    for _ in range(n):
        v = await healer.tick()
        clock.offset += healer.options.interval_s
    return v


async def role_a(mem: tuple[MemoryBus, Clock], tmp_path: Path) -> tuple[Names, Healer, Metrics]:
    bus, clock = mem
    spec = make_spec(tmp_path, TWO_ROLES, [])
    names = await ensure_workflow(bus, spec)
    metrics = Metrics()
    return names, heal.for_role(bus, names, "a", 1.0, clock=clock, metrics=metrics), metrics


async def test_a_stranded_task_is_handed_back_once_and_its_copy_deleted_on_ack(
        mem: tuple[MemoryBus, Clock], tmp_path: Path) -> None:
    bus, clock = mem
    names, healer, metrics = await role_a(mem, tmp_path)
    seq = await stranded(bus, names)
    puller = healer.wrap(await bus.puller(names.tasks_stream, "a"))
    with capture_logs() as logs:
        assert (await checks(healer, clock, 2)) is not None and not healer.ready
        verdict = await checks(healer, clock, 1)
    assert verdict is not None and [r.seq for r in verdict.rerun] == [seq]
    healed = [e for e in logs if e["event"] == "liveness.healed"]
    assert [(e["task"], e["role"], e["seq"]) for e in healed] == [("t1", "a", seq)]
    [d] = await puller.fetch(10, 0.01)
    assert isinstance(d, HealedDelivery) and d.subject == names.task("a") and d.num_delivered == 1
    assert envelope.decode(d.data).id == "t1"
    assert not await puller.fetch(10, 0.01)  # once, while it runs
    await d.ack()
    assert await bus.stream_msgs(names.tasks_stream) == 0
    assert b'matrix_p2p_liveness_heals_total{action="rerun",role="a"} 1.0' in metrics.render()
    assert (await checks(healer, clock, 4)) is not None and not healer.ready


async def test_a_rerun_nobody_settles_is_handed_back_after_ack_wait(
        mem: tuple[MemoryBus, Clock], tmp_path: Path) -> None:
    bus, clock = mem
    names, healer, _ = await role_a(mem, tmp_path)
    seq = await stranded(bus, names)
    await checks(healer, clock)
    [first] = healer.take(10)
    await first.in_progress()  # kept alive for one more ack_wait
    clock.offset += 0.9
    await healer.tick()
    assert healer.watch.busy == {seq}
    clock.offset += 0.2  # ... then its owner crashed in the hop: nothing settles it
    await healer.tick()
    assert healer.watch.busy == frozenset()
    await checks(healer, clock, 4)  # off-interval: the first of these does not read
    [again] = healer.take(10)
    assert again.num_delivered == 2
    await again.nak(delay=5.0)  # settled: the first one's late ack or nak is refused
    with pytest.raises(Exception, match="already settled"):
        await again.ack()


async def test_an_old_stranded_task_is_dead_lettered_not_rerun(
        mem: tuple[MemoryBus, Clock], tmp_path: Path) -> None:
    """Older than half the dedup window: its hop may have run and its successor's msg-id
    left the window, so running it again could finish the task twice."""
    bus, clock = mem
    names, healer, metrics = await role_a(mem, tmp_path)
    seq = await stranded(bus, names)
    clock.offset += 1000.0
    with capture_logs() as logs:
        verdict = await checks(healer, clock)
    assert verdict == heal.Verdict(park=(seq,)) and not healer.ready
    assert [(e["task"], e["seq"]) for e in logs if e["event"] == "liveness.parked"] == [("t1", seq)]
    assert await bus.stream_msgs(names.tasks_stream) == 0
    [dead] = [m async for m in bus.iter_stream(names.dlq_stream)]
    assert dead.headers["Mx-Task"] == "t1" and dead.headers["Mx-Subject"] == names.task("a")
    assert "never delivered by consumer a" in dead.headers["Mx-Reason"]
    assert b'matrix_p2p_liveness_heals_total{action="park",role="a"} 1.0' in metrics.render()


async def test_a_result_the_sink_consumer_skips_is_written_once(
        mem: tuple[MemoryBus, Clock], tmp_path: Path) -> None:
    bus, _ = mem
    spec = make_spec(tmp_path, TWO_ROLES, [])
    out = tmp_path / "out.jsonl"
    sink = Sink(bus, spec, out)
    sink.liveness = heal.LivenessOptions(interval_s=0.01, hold_s=0.02)
    names = Names.of(spec)
    ready = asyncio.Event()
    async with asyncio.timeout(10):
        run = asyncio.create_task(sink.run(asyncio.Event(), expect=2, ready=ready))
        await ready.wait()
        await bus.publish(names.done, envelope.encode(result(spec, "r1")), msg_id="r1:3")
        m = await bus.stored(names.results_stream, 1)
        assert m is not None
        bus.strand(names.results_stream, sink.durable, m)  # before the sink could fetch it
        await bus.publish(names.done, envelope.encode(result(spec, "r2")), msg_id="r2:3")
        assert await run == 2
    assert sorted(r["id"] for r in map(envelope.msgspec.json.decode, out.read_bytes().splitlines())) \
        == ["r1", "r2"]
    assert await bus.stream_msgs(names.results_stream) == 2  # the record is left as it was
