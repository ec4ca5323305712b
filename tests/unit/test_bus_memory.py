"""The in-memory bus: JetStream's semantics that the runtime depends on, driven by
an injected clock (no sleeps). What both buses share is also in the contract suite."""

from __future__ import annotations

import asyncio

import pytest

from matrix_p2p.bus import BusError, ConsumerDef, MemoryBus, PayloadTooLargeError, StreamDef
from matrix_p2p.bus.errors import NotFound
from matrix_p2p.bus.memory import subject_matches
from tests.bus_cases import exact

S = "mx.t.task"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def make(clock: Clock, *, retention: str = "work_queue", ack_wait_s: float = 30.0,
               max_ack_pending: int = 100, **kw: object) -> MemoryBus:
    bus = MemoryBus(clock=clock, **kw)  # type: ignore[arg-type]
    await bus.ensure_stream(StreamDef(name="T", subjects=[f"{S}.>"], retention=retention,  # type: ignore[arg-type]
                                      duplicate_window_s=60.0, replicas=None, max_msg_size=1000))
    await bus.ensure_consumer("T", ConsumerDef(durable="judge", filter_subject=f"{S}.judge",
                                               ack_wait_s=ack_wait_s, max_ack_pending=max_ack_pending,
                                               max_waiting=512))
    return bus


@pytest.mark.parametrize(("pattern", "subject", "match"), [
    ("a.b", "a.b", True), ("a.b", "a.c", False), ("a.*", "a.b", True), ("a.*", "a.b.c", False),
    ("a.>", "a.b", True), ("a.>", "a.b.c", True), ("a.>", "a", False), ("*.b.*", "x.b.y", True),
    ("a.b", "a.b.c", False), ("a.b.c", "a.b", False), (">", "a", True), ("*", "a.b", False),
])
def test_subject_matching(pattern: str, subject: str, match: bool) -> None:
    assert subject_matches(pattern, subject) is match


async def test_fetch_gives_up_to_batch_of_the_filtered_subject_only(clock: Clock) -> None:
    bus = await make(clock)
    for i in range(5):
        await bus.publish(f"{S}.judge", b"%d" % i)
    await bus.publish(f"{S}.teacher", b"other role")
    p = await bus.puller("T", "judge")
    got = await p.fetch(3, timeout=0)
    assert [d.data for d in got] == [b"0", b"1", b"2"]
    assert [d.num_delivered for d in got] == [1, 1, 1]
    assert [d.data for d in await p.fetch(10, timeout=0)] == [b"3", b"4"]
    assert await p.fetch(10, timeout=0) == []


async def test_work_queue_removes_on_ack_and_term_limits_keeps(clock: Clock) -> None:
    wq = await make(clock)
    lim = await make(clock, retention="limits")
    for bus in (wq, lim):
        await bus.publish(f"{S}.judge", b"a")
        await bus.publish(f"{S}.judge", b"b")
        a, b = await (await bus.puller("T", "judge")).fetch(2, timeout=0)
        await a.ack()
        await b.term()
    assert await wq.stream_msgs("T") == 0
    assert await lim.stream_msgs("T") == 2
    assert await (await lim.puller("T", "judge")).fetch(5, timeout=0) == []  # acked, termed: done


async def test_ack_wait_expiry_redelivers_and_in_progress_extends_it(clock: Clock) -> None:
    bus = await make(clock, ack_wait_s=10)
    await bus.publish(f"{S}.judge", b"slow")
    await bus.publish(f"{S}.judge", b"lost")
    p = await bus.puller("T", "judge")
    slow, _lost = await p.fetch(2, timeout=0)
    clock.now += 8
    await slow.in_progress()
    clock.now += 8  # 16 s after delivery: lost is due again, slow's heartbeat kept it
    again = await p.fetch(5, timeout=0)
    assert [(d.data, d.num_delivered) for d in again] == [(b"lost", 2)]
    clock.now += 3
    assert [(d.data, d.num_delivered) for d in await p.fetch(5, timeout=0)] == [(b"slow", 2)]


async def test_nak_redelivers_now_or_after_its_delay(clock: Clock) -> None:
    bus = await make(clock)
    await bus.publish(f"{S}.judge", b"now")
    await bus.publish(f"{S}.judge", b"later")
    p = await bus.puller("T", "judge")
    now, later = await p.fetch(2, timeout=0)
    await now.nak()
    await later.nak(delay=5)
    assert [(d.data, d.num_delivered) for d in await p.fetch(5, timeout=0)] == [(b"now", 2)]
    clock.now += 4.9
    assert await p.fetch(5, timeout=0) == []
    clock.now += 0.2
    assert [(d.data, d.num_delivered) for d in await p.fetch(5, timeout=0)] == [(b"later", 2)]


async def test_max_ack_pending_holds_back_new_messages_not_redeliveries(clock: Clock) -> None:
    bus = await make(clock, max_ack_pending=2)
    for i in range(4):
        await bus.publish(f"{S}.judge", b"%d" % i)
    p = await bus.puller("T", "judge")
    first = await p.fetch(10, timeout=0)
    assert [d.data for d in first] == [b"0", b"1"]
    assert await p.fetch(10, timeout=0) == []
    await first[1].nak()
    assert [d.data for d in await p.fetch(10, timeout=0)] == [b"1"]  # a redelivery: allowed
    await first[0].ack()
    assert [d.data for d in await p.fetch(10, timeout=0)] == [b"2"]
    stats = await bus.consumer_stats("T", "judge")
    assert stats is not None
    assert (stats.pending, stats.ack_pending, stats.redelivered, stats.waiting) == (1, 2, 1, 0)


async def test_settling_twice_is_a_bus_error_and_in_progress_after_it_is_ignored(clock: Clock) -> None:
    bus = await make(clock)
    await bus.publish(f"{S}.judge", b"x")
    (d,) = await (await bus.puller("T", "judge")).fetch(1, timeout=0)
    await d.ack_sync()
    for settle, word in ((d.ack, "ack"), (d.nak, "nak"), (d.term, "term")):
        message = f"{word} of {S}.judge failed: message already acknowledged"
        with pytest.raises(BusError, match=exact(message)):
            await settle()
    await d.in_progress()


async def test_deliveries_are_dict_keys_by_identity(clock: Clock) -> None:
    bus = await make(clock)
    await bus.publish(f"{S}.judge", b"x")
    p = await bus.puller("T", "judge")
    (first,) = await p.fetch(1, timeout=0)
    await first.nak()
    (second,) = await p.fetch(1, timeout=0)  # the same message, delivered again
    slots = {first: "old", second: "new"}
    assert len(slots) == 2 and slots[second] == "new"


async def test_dedup_within_the_window_only(clock: Clock) -> None:
    bus = await make(clock)
    assert await bus.publish(f"{S}.judge", b"1", msg_id="t:1") is False
    assert await bus.publish(f"{S}.judge", b"1", msg_id="t:1") is True
    clock.now += 59
    assert await bus.publish(f"{S}.judge", b"1", msg_id="t:1") is True
    clock.now += 2
    assert await bus.publish(f"{S}.judge", b"1", msg_id="t:1") is False
    assert await bus.stream_msgs("T") == 2


async def test_sizes_are_refused_with_the_same_words_as_jetstream(clock: Clock) -> None:
    bus = await make(clock, max_payload=2000)
    with pytest.raises(PayloadTooLargeError, match=(
            f"^publish to {S}.judge refused: 2001 bytes exceed the broker's max_payload of 2000 bytes$")):
        await bus.publish(f"{S}.judge", b"x" * 2001)
    message = f"publish to {S}.judge refused: message size exceeds maximum allowed"
    with pytest.raises(BusError, match=exact(message)):
        await bus.publish(f"{S}.judge", b"x" * 1001)  # the stream's max_msg_size
    with pytest.raises(BusError, match=exact("publish to nowhere failed: no stream accepts this subject")):
        await bus.publish("nowhere", b"x")


async def test_fetch_wakes_on_publish_without_polling(clock: Clock) -> None:
    bus = await make(clock)
    p = await bus.puller("T", "judge")
    waiting = asyncio.create_task(p.fetch(5, timeout=30))
    await asyncio.sleep(0)  # let it start waiting
    assert (await bus.consumer_stats("T", "judge")).waiting == 1  # type: ignore[union-attr]
    await bus.publish(f"{S}.judge", b"hello")
    async with asyncio.timeout(2):
        got = await waiting
    assert [d.data for d in got] == [b"hello"]


async def test_wake_lets_a_waiting_fetch_see_a_moved_clock(clock: Clock) -> None:
    bus = await make(clock)
    await bus.publish(f"{S}.judge", b"x")
    p = await bus.puller("T", "judge")
    (d,) = await p.fetch(1, timeout=0)
    await d.nak(delay=3600)
    waiting = asyncio.create_task(p.fetch(1, timeout=30))
    await asyncio.sleep(0)
    clock.now += 3600
    bus.wake()
    async with asyncio.timeout(2):
        assert [x.num_delivered for x in await waiting] == [2]


async def test_faults_replace_an_operation_until_cleared(clock: Clock) -> None:
    bus = await make(clock)
    seen: list[tuple[str, str]] = []

    def fault(op: str, target: str) -> BaseException | None:
        seen.append((op, target))
        return BusError(f"{op} to {target} failed: injected") if op in ("publish", "ack") else None

    bus.fault = fault
    with pytest.raises(BusError, match=exact("publish to mx.t.task.judge failed: injected")):
        await bus.publish(f"{S}.judge", b"x")
    bus.fault = None
    await bus.publish(f"{S}.judge", b"x")
    bus.fault = fault
    (d,) = await (await bus.puller("T", "judge")).fetch(1, timeout=0)
    with pytest.raises(BusError, match=r"injected"):
        await d.ack()
    assert seen == [("publish", f"{S}.judge"), ("fetch", "judge"), ("ack", f"{S}.judge")]


async def test_close_fails_later_calls_and_wakes_a_waiting_fetch(clock: Clock) -> None:
    bus = await make(clock)
    p = await bus.puller("T", "judge")
    waiting = asyncio.create_task(p.fetch(1, timeout=30))
    await asyncio.sleep(0)
    await bus.close()
    with pytest.raises(BusError, match=exact("fetch from T/judge failed: NATS connection closed")):
        async with asyncio.timeout(2):
            await waiting
    with pytest.raises(BusError, match=exact(f"publish to {S}.judge failed: NATS connection closed")):
        await bus.publish(f"{S}.judge", b"x")
    await bus.close()  # twice is fine


async def test_set_up_errors(clock: Clock) -> None:
    bus = await make(clock)
    message = "create consumer d on NOPE failed: not found (stream not found)"
    with pytest.raises(NotFound, match=exact(message)):
        await bus.ensure_consumer("NOPE", ConsumerDef(durable="d", filter_subject=None, ack_wait_s=1,
                                                      max_ack_pending=1, max_waiting=None))
    message = "bind to consumer nobody on T failed: not found (consumer not found)"
    with pytest.raises(NotFound, match=exact(message)):
        await bus.puller("T", "nobody")
    with pytest.raises(BusError, match=r"^update stream T refused: .*retention"):
        await bus.ensure_stream(StreamDef(name="T", subjects=[f"{S}.>"], retention="limits",
                                          duplicate_window_s=None, replicas=None))
    # replicas None keeps what the stream has; given, it applies
    await bus.ensure_stream(StreamDef(name="T", subjects=[f"{S}.>"], retention="work_queue",
                                      duplicate_window_s=60.0, replicas=3))
    await bus.ensure_stream(StreamDef(name="T", subjects=[f"{S}.>"], retention="work_queue",
                                      duplicate_window_s=60.0, replicas=None))
    assert bus.streams["T"].replicas == 3


async def test_reads_by_sequence(clock: Clock) -> None:
    bus = await make(clock, retention="limits")
    for i, role in enumerate(["judge", "teacher", "judge", "teacher"]):
        await bus.publish(f"{S}.{role}", b"%d" % i, headers={"Mx-Reason": "r"}, msg_id=f"m{i}")
    assert await bus.stream_counts("T") == {f"{S}.judge": 2, f"{S}.teacher": 2}
    assert await bus.stream_bounds("T") == (1, 4)
    m = await bus.stored("T", 2)
    assert m is not None and (m.data, m.time, m.headers) == (b"1", clock.now,
                                                             {"Mx-Reason": "r", "Nats-Msg-Id": "m1"})
    assert (await bus.next_msg("T", 2, f"{S}.judge")).seq == 3  # type: ignore[union-attr]
    assert await bus.delete_msg("T", 1) is True
    assert await bus.delete_msg("T", 1) is False
    assert await bus.stream_bounds("T") == (2, 4)
    assert [m.seq async for m in bus.iter_stream("T")] == [2, 3, 4]
    assert [m.seq async for m in bus.iter_stream("T", f"{S}.teacher", start=3)] == [4]


async def test_key_value_and_fleet_state_are_shared_on_one_bus(clock: Clock) -> None:
    bus = MemoryBus(clock=clock)
    a, b = await bus.key_value("SUB"), await bus.key_value("SUB", replicas=3)
    assert await a.create("t1") is True
    assert await b.create("t1") is False
    assert await b.exists("t1") and not await b.exists("t2")
    assert await (await bus.key_value("OTHER")).exists("t1") is False
    async with bus.fleet_state() as f1, bus.fleet_state(bucket="ignored") as f2:
        assert f1 is f2
