"""No task left stuck: a message the stream holds and its consumer will not deliver ends
exactly once (``matrix_p2p.liveness``; DESIGN.md "Liveness").

On the real nats-server the defect is made with the JetStream API (nats-server #5564, by
design): the role's consumer gets a delivery limit of one, the task's first delivery is
nakked, so the server drops it from the consumer (passed, never to be delivered again)
while the work-queue stream keeps it; then the limit is put back. In memory,
``MemoryBus.strand`` plays the shape seen after a broker ``kill -9``: a message whose
hop already ran is held again below the consumer's floor. Time: ``ack_wait_s: 1``, so a
check every second and a message stuck after three checks spanning two seconds.
"""

from __future__ import annotations

from pathlib import Path

import nats
from nats.js import api
from structlog.testing import capture_logs

from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.bus import Bus, MemoryBus
from matrix_p2p.runtime.source import submit
from matrix_p2p.runtime.status import render_status, workflow_status
from matrix_p2p.runtime.topology import Names
from tests.conftest import make_spec
from tests.fault_rig import HOPS, TWO_ROLES, Clock, Rig, setup, stored, worker
from tests.invariants import wait_finished


async def strand_on_broker(url: str, names: Names, role: str) -> int:
    """Make the broker drop the only task on ``role`` from its consumer, undelivered for
    good, the stream still holding it. Returns its sequence."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        cfg = (await js.consumer_info(names.tasks_stream, role)).config
        cfg.max_deliver = 1
        await js.add_consumer(names.tasks_stream, cfg)
        sub = await js.pull_subscribe_bind(durable=role, stream=names.tasks_stream)
        [first] = await sub.fetch(1, timeout=5)
        await first.nak()
        await nc.flush()  # the nak is in before the next pull
        try:  # this pull finds it past its delivery limit: dropped, nothing delivered
            got = await sub.fetch(1, timeout=0.5)
        except TimeoutError:
            got = []
        assert got == []
        cfg.max_deliver = -1
        await js.add_consumer(names.tasks_stream, cfg)
        await sub.unsubscribe()
        return int(first.metadata.sequence.stream)
    finally:
        await nc.close()


def healed(logs: list[dict[str, object]]) -> list[tuple[object, object, object]]:
    return [(e["task"], e["role"], e["seq"]) for e in logs if e["event"] == "liveness.healed"]


async def test_a_task_the_broker_will_not_deliver_finishes_exactly_once(
        bus: Bus, nats_server: EmbeddedNats, tmp_path: Path) -> None:
    """Guard: the liveness check (``make mutate`` breaks the re-run). One task is stranded,
    two more flow past it; all three end once, that one through a single re-run."""
    spec = make_spec(tmp_path, TWO_ROLES, [{"n": i} for i in range(3)])
    names = Names.of(spec)
    await submit(bus, spec, limit=1)
    seq = await strand_on_broker(nats_server.url, names, "a")
    assert (await submit(bus, spec)).submitted == 2
    ids = sorted(t.id for t in await stored(bus, names.tasks_stream))
    m = await bus.stored(names.tasks_stream, seq)
    assert m is not None and len(ids) == 3
    stuck = m.headers["Nats-Msg-Id"].rpartition(":")[0]
    c = await bus.consumer_stats(names.tasks_stream, "a")
    assert c is not None and (c.delivered_seq, c.ack_floor_seq, c.ack_pending) == (seq, 0, 0)
    st = await workflow_status(bus, spec)
    assert st.roles[0].undeliverable == [seq]
    assert f"liveness: 1 tasks held for a that its consumer will not deliver (#{seq})" \
        in render_status(st)
    with capture_logs() as logs:
        async with worker(bus, spec):
            await wait_finished(bus, names, ids, step="a task its consumer would not deliver",
                                within_s=10, hops=HOPS, status="done")
    assert healed(logs) == [(stuck, "a", seq)]  # that one, once; the others flowed as usual
    assert (await workflow_status(bus, spec)).roles[0].undeliverable == []


async def test_a_task_whose_hop_already_ran_is_not_run_twice(tmp_path: Path) -> None:
    """The shape seen after a broker ``kill -9``: every task done, and one of them held
    again at the hop it had left. Its re-run publishes the next hop under the same msg-id,
    which the broker drops: one result per task, and the stream is emptied."""
    bus = MemoryBus(clock=Clock())
    try:
        spec, names, ids = await setup(Rig(bus, None), tmp_path)
        first = await bus.stored(names.tasks_stream, 1)
        assert first is not None
        async with worker(bus, spec):
            await wait_finished(bus, names, ids, step="the run", hops=HOPS, status="done")
        bus.strand(names.tasks_stream, "a", first)
        assert (await workflow_status(bus, spec)).live_tasks == 1
        with capture_logs() as logs:
            async with worker(bus, spec):
                results = await wait_finished(bus, names, ids, step="a finished task held again",
                                              hops=HOPS, status="done")
        assert healed(logs) == [(first.headers["Nats-Msg-Id"].rpartition(":")[0], "a", 1)]
        assert len(results) == len(ids)
    finally:
        await bus.close()


async def test_nats_api_used_to_strand_is_the_one_the_server_speaks(
        nats_server: EmbeddedNats) -> None:
    """The stranding above relies on the server dropping a message past ``max_deliver``
    on a work queue and keeping it stored (nats-server #5564): checked on its own, so a
    server that changes this fails here rather than as a liveness failure."""
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        name = f"STRAND_{id(nc)}"
        await js.add_stream(api.StreamConfig(name=name, subjects=[f"{name.lower()}.>"],
                                             retention=api.RetentionPolicy.WORK_QUEUE))
        cfg = api.ConsumerConfig(durable_name="c", ack_policy=api.AckPolicy.EXPLICIT,
                                 max_deliver=1, ack_wait=30)
        await js.add_consumer(name, cfg)
        await js.publish(f"{name.lower()}.x", b"one")
        await js.publish(f"{name.lower()}.x", b"two")
        sub = await js.pull_subscribe_bind(durable="c", stream=name)
        [one] = await sub.fetch(1, timeout=5)
        await one.nak()
        await nc.flush()
        [two] = await sub.fetch(1, timeout=5)
        await two.ack_sync()
        info = await js.consumer_info(name, "c")
        assert (info.num_pending, info.num_ack_pending, info.ack_floor.stream_seq) == (0, 0, 2)
        assert (await js.stream_info(name)).state.messages == 1  # "one", held for good
        await js.delete_stream(name)
    finally:
        await nc.close()
