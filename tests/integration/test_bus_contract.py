"""One suite, two buses: ``MemoryBus`` and JetStream on a real nats-server must
behave the same wherever the runtime depends on it, down to the error messages."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator

import pytest

from matrix_p2p.bus import (
    Bus,
    BusError,
    ConnectOptions,
    ConsumerDef,
    Delivery,
    MemoryBus,
    PayloadTooLargeError,
    StreamDef,
    connect,
)
from matrix_p2p.bus.errors import NotFound

_ids = itertools.count()


@pytest.fixture(params=["memory", "jetstream"])
async def any_bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    bus: Bus
    if request.param == "jetstream":
        server = request.getfixturevalue("nats_server")  # started once per session
        bus = await connect(ConnectOptions(url=server.url, name="contract"))
    else:
        bus = MemoryBus(max_payload=8 * 1024 * 1024)  # the embedded server's
    yield bus
    await bus.close()


class NS:
    """Names unique to one test: its own streams on the shared server."""

    def __init__(self) -> None:
        n = f"c{next(_ids)}x{os.getpid()}"
        self.stream, self.results, self.prefix = f"{n.upper()}_TASKS", f"{n.upper()}_RES", f"{n}.task"

    def subject(self, role: str) -> str:
        return f"{self.prefix}.{role}"

    def tasks(self, replicas: int | None = None) -> StreamDef:
        return StreamDef(name=self.stream, subjects=[f"{self.prefix}.>"], retention="work_queue",
                         duplicate_window_s=600.0, replicas=replicas)

    def consumer(self, role: str, *, ack_wait_s: float = 30.0, max_ack_pending: int = 100) -> ConsumerDef:
        return ConsumerDef(durable=role, filter_subject=self.subject(role), ack_wait_s=ack_wait_s,
                           max_ack_pending=max_ack_pending, max_waiting=512)


async def ready(bus: Bus, **consumer: float) -> NS:
    ns = NS()
    await bus.ensure_stream(ns.tasks())
    await bus.ensure_consumer(ns.stream, ns.consumer("judge", **consumer))  # type: ignore[arg-type]
    return ns


async def test_set_up_is_idempotent(any_bus: Bus) -> None:
    ns = await ready(any_bus)
    await any_bus.publish(ns.subject("judge"), b"kept")
    for _ in range(2):
        await any_bus.ensure_stream(ns.tasks(replicas=None))
        await any_bus.ensure_stream(ns.tasks(replicas=1))
        await any_bus.ensure_consumer(ns.stream, ns.consumer("judge"))
    assert await any_bus.stream_msgs(ns.stream) == 1
    (d,) = await (await any_bus.puller(ns.stream, "judge")).fetch(5, timeout=2)
    assert (d.data, d.subject, d.num_delivered) == (b"kept", ns.subject("judge"), 1)
    await d.ack()


async def test_publish_dedups_by_msg_id(any_bus: Bus) -> None:
    ns = await ready(any_bus)
    s = ns.subject("judge")
    assert await any_bus.publish(s, b"a", msg_id="t1:1", headers={"Mx-Task": "t1"}) is False
    assert await any_bus.publish(s, b"a", msg_id="t1:1") is True
    assert await any_bus.publish(s, b"a", msg_id="t1:2") is False
    assert await any_bus.stream_msgs(ns.stream) == 2
    first, _ = await (await any_bus.puller(ns.stream, "judge")).fetch(5, timeout=2)
    assert first.headers == {"Mx-Task": "t1", "Nats-Msg-Id": "t1:1"}


async def test_fetch_ack_nak_term_and_delivery_counts(any_bus: Bus) -> None:
    ns = await ready(any_bus)
    for word in (b"ack", b"nak", b"term"):
        await any_bus.publish(ns.subject("judge"), word)
    p = await any_bus.puller(ns.stream, "judge")
    got = {d.data: d for d in await p.fetch(10, timeout=2)}
    assert sorted(got) == [b"ack", b"nak", b"term"]
    assert {d.num_delivered for d in got.values()} == {1}
    await got[b"ack"].ack()
    await got[b"nak"].nak()
    await got[b"term"].term()
    (again,) = await p.fetch(10, timeout=2)
    assert (again.data, again.num_delivered) == (b"nak", 2)
    await again.ack_sync()
    assert await p.fetch(10, timeout=0.3) == []
    assert await any_bus.stream_msgs(ns.stream) == 0  # work queue: acked and termed are gone
    await p.unsubscribe()


async def test_nak_delay_and_ack_wait_redeliver(any_bus: Bus) -> None:
    ns = await ready(any_bus, ack_wait_s=1.0)
    await any_bus.publish(ns.subject("judge"), b"delayed")
    await any_bus.publish(ns.subject("judge"), b"forgotten")
    p = await any_bus.puller(ns.stream, "judge")
    delayed, forgotten = await p.fetch(2, timeout=2)
    await delayed.nak(delay=0.5)
    got = []
    async with asyncio.timeout(10):
        while len(got) < 2:
            got += await p.fetch(2, timeout=3)
    assert sorted((d.data, d.num_delivered) for d in got) == [(b"delayed", 2), (b"forgotten", 2)]
    for d in got:
        await d.ack()
    assert forgotten.num_delivered == 1


async def test_max_ack_pending_caps_what_is_handed_out(any_bus: Bus) -> None:
    ns = await ready(any_bus, max_ack_pending=2)
    for i in range(3):
        await any_bus.publish(ns.subject("judge"), b"%d" % i)
    p = await any_bus.puller(ns.stream, "judge")
    first = await p.fetch(10, timeout=1)
    assert len(first) == 2
    stats = await any_bus.consumer_stats(ns.stream, "judge")
    assert stats is not None and (stats.pending, stats.ack_pending) == (1, 2)
    await first[0].ack()
    (last,) = await p.fetch(1, timeout=2)
    assert last.data == b"2"
    await p.unsubscribe()


async def test_consumer_stats_count_redeliveries(any_bus: Bus) -> None:
    ns = await ready(any_bus)
    for i in range(3):
        await any_bus.publish(ns.subject("judge"), b"%d" % i)
    p = await any_bus.puller(ns.stream, "judge")
    (d,) = await p.fetch(1, timeout=2)
    await d.nak()
    got: list[Delivery] = []
    async with asyncio.timeout(10):
        while len(got) < 3:  # the broker may hand out the redelivery before or after the others
            got += await p.fetch(3, timeout=2)
    assert sorted((x.data, x.num_delivered) for x in got) == [(b"0", 2), (b"1", 1), (b"2", 1)]
    stats = await any_bus.consumer_stats(ns.stream, "judge")
    assert stats is not None
    assert (stats.pending, stats.ack_pending, stats.redelivered) == (0, 3, 1)
    assert await any_bus.consumer_stats(ns.stream, "nobody") is None


async def test_where_a_consumer_stands_in_its_stream(any_bus: Bus) -> None:
    """The liveness check reads the delivered and ack-floor stream sequences, and each
    delivery's stream sequence (``matrix_p2p.liveness``)."""
    ns = await ready(any_bus)
    await any_bus.publish(ns.subject("other"), b"not judge's")  # seq 1: outside the filter
    for i in range(3):
        await any_bus.publish(ns.subject("judge"), b"%d" % i)  # seqs 2, 3, 4
    p = await any_bus.puller(ns.stream, "judge")
    got: list[Delivery] = []
    async with asyncio.timeout(10):
        while len(got) < 2:
            got += await p.fetch(2 - len(got), timeout=2)
    assert [(d.data, d.seq) for d in got] == [(b"0", 2), (b"1", 3)]
    await got[1].ack_sync()  # acked out of order: the floor stays below the first
    stats = await any_bus.consumer_stats(ns.stream, "judge")
    assert stats is not None
    assert (stats.delivered_seq, stats.ack_pending, stats.pending) == (3, 1, 1)
    assert stats.ack_floor_seq < 2
    await got[0].ack_sync()
    stats = await any_bus.consumer_stats(ns.stream, "judge")
    assert stats is not None and (stats.delivered_seq, stats.ack_floor_seq) == (3, 3)


async def test_settling_twice_is_refused(any_bus: Bus) -> None:
    ns = await ready(any_bus)
    await any_bus.publish(ns.subject("judge"), b"x")
    (d,) = await (await any_bus.puller(ns.stream, "judge")).fetch(1, timeout=2)
    await d.ack()
    with pytest.raises(BusError) as err:
        await d.term()
    assert str(err.value) == f"term of {ns.subject('judge')} failed: message already acknowledged"
    await d.in_progress()  # allowed any number of times, even now


async def test_key_value_creates_once(any_bus: Bus) -> None:
    bucket = f"{NS().stream}_SUB"
    kv = await any_bus.key_value(bucket)
    assert await kv.create("task-1") is True
    assert await kv.create("task-1") is False
    assert await (await any_bus.key_value(bucket)).create("task-1") is False  # reopened
    assert await kv.exists("task-1") is True
    assert await kv.exists("task-2") is False
    assert await kv.create("owned", b"task-9") is True
    assert await kv.get("owned") == b"task-9"
    assert await kv.get("task-2") is None


async def test_reading_a_stream_back(any_bus: Bus) -> None:
    ns = NS()
    subjects = [f"{ns.prefix}.done", f"{ns.prefix}.failed"]
    await any_bus.ensure_stream(StreamDef(name=ns.results, subjects=subjects, retention="limits",
                                          duplicate_window_s=None, replicas=None))
    for i, status in enumerate(["done", "failed", "done", "done", "failed"]):
        await any_bus.publish(f"{ns.prefix}.{status}", b"%d" % i, headers={"Mx-Reason": f"r{i}"})
    assert await any_bus.stream_counts(ns.results) == {f"{ns.prefix}.done": 3, f"{ns.prefix}.failed": 2}
    assert await any_bus.stream_bounds(ns.results) == (1, 5)
    assert [m.seq async for m in any_bus.iter_stream(ns.results, f"{ns.prefix}.failed")] == [2, 5]
    assert [m.data async for m in any_bus.iter_stream(ns.results, start=2, end=4)] == [b"1", b"2", b"3"]
    assert await any_bus.delete_msg(ns.results, 3) is True
    assert await any_bus.delete_msg(ns.results, 3) is False
    assert await any_bus.stored(ns.results, 3) is None
    m = await any_bus.stored(ns.results, 4)
    assert m is not None and (m.seq, m.subject, m.data, m.headers) == (
        4, f"{ns.prefix}.done", b"3", {"Mx-Reason": "r3"})
    assert m.time > 1.6e9
    assert [m.seq async for m in any_bus.iter_stream(ns.results)] == [1, 2, 4, 5]
    assert (await any_bus.next_msg(ns.results, 3)).seq == 4  # type: ignore[union-attr]
    assert await any_bus.next_msg(ns.results, 6) is None


async def test_a_missing_stream_reads_as_empty(any_bus: Bus) -> None:
    name = NS().stream
    assert await any_bus.stream_msgs(name) == 0
    assert await any_bus.stream_counts(name) == {}
    assert await any_bus.stream_bounds(name) == (0, 0)
    assert await any_bus.next_msg(name, 1) is None
    assert await any_bus.stored(name, 1) is None
    assert await any_bus.delete_msg(name, 1) is False
    assert [m async for m in any_bus.iter_stream(name)] == []


async def test_refusals_are_worded_alike(any_bus: Bus) -> None:
    ns = await ready(any_bus)
    s = ns.subject("judge")
    with pytest.raises(PayloadTooLargeError) as big:
        await any_bus.publish(s, b"x" * (any_bus.max_payload + 1))
    assert str(big.value) == (f"publish to {s} refused: {any_bus.max_payload + 1} bytes exceed the "
                              f"broker's max_payload of {any_bus.max_payload} bytes")
    with pytest.raises(BusError) as nowhere:
        await any_bus.publish(f"{ns.prefix}x.judge", b"x", timeout=1.0)
    assert str(nowhere.value) == f"publish to {ns.prefix}x.judge failed: no stream accepts this subject"
    with pytest.raises(NotFound) as missing:
        await any_bus.ensure_consumer(f"{ns.stream}X", ns.consumer("judge"))
    assert str(missing.value) == (f"create consumer judge on {ns.stream}X failed: not found "
                                  "(stream not found)")
    limited = StreamDef(name=f"{ns.stream}_L", subjects=[f"{ns.prefix}l.>"], retention="limits",
                        duplicate_window_s=None, replicas=None, max_msg_size=100)
    await any_bus.ensure_stream(limited)
    with pytest.raises(BusError) as over:
        await any_bus.publish(f"{ns.prefix}l.x", b"x" * 101)
    assert str(over.value) == f"publish to {ns.prefix}l.x refused: message size exceeds maximum allowed"


async def test_object_store_put_get_delete(any_bus: Bus) -> None:
    bucket = f"objs{next(_ids)}x{os.getpid()}"
    objs = await any_bus.object_store(bucket)
    big = os.urandom(3 * 1024 * 1024 + 7)  # many chunks, over a 1 MB max_payload
    await objs.put("task-1/abc", big)
    await objs.put("task-1/small", b"x")
    assert await objs.get("task-1/abc") == big
    assert await (await any_bus.object_store(bucket)).get("task-1/small") == b"x"  # reopened
    await objs.put("task-1/small", b"yz")  # replaced
    assert await objs.get("task-1/small") == b"yz"
    assert await objs.delete("task-1/abc") is True
    assert await objs.get("task-1/abc") is None
    assert await objs.delete("task-1/abc") is False
    assert await objs.get("never") is None
    assert await objs.delete("task-1/small") is True
    if not isinstance(any_bus, MemoryBus):  # nothing left behind, not even a tombstone
        from matrix_p2p.bus.objects import stream_of

        assert await any_bus.stream_msgs(stream_of(bucket)) == 0
