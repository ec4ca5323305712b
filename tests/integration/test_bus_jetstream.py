"""What only the real broker can show: connect failures and a connection that goes away
under deliveries still come out as one-line ``BusError``\\ s."""

from __future__ import annotations

import asyncio
import itertools
import os

import pytest

from matrix_p2p.broker import EmbeddedNats, free_port
from matrix_p2p.bus import Bus, BusError, ConnectOptions, ConsumerDef, StreamDef, connect
from matrix_p2p.bus.errors import TimedOut
from matrix_p2p.bus.jetstream import JetStreamBus
from tests.bus_cases import exact

_ids = itertools.count()


async def test_a_refused_first_connect_is_one_line_and_hides_secrets() -> None:
    port = free_port()
    with pytest.raises(BusError) as err:
        await connect(ConnectOptions(url=f"nats://alice:s3cret@127.0.0.1:{port}"), connect_timeout=0.5)
    msg = str(err.value)
    assert msg.startswith(f"cannot connect to NATS at nats://127.0.0.1:{port}: ")
    assert "s3cret" not in msg and "alice" not in msg and "\n" not in msg


async def test_settling_after_the_connection_closed_is_a_bus_error(nats_server: EmbeddedNats) -> None:
    bus = await connect(ConnectOptions(url=nats_server.url, name="tests"))
    n = f"j{next(_ids)}x{os.getpid()}"
    await bus.ensure_stream(StreamDef(name=n.upper(), subjects=[f"{n}.>"], retention="work_queue",
                                      duplicate_window_s=60.0, replicas=None))
    await bus.ensure_consumer(n.upper(), ConsumerDef(durable="w", filter_subject=None, ack_wait_s=30,
                                                     max_ack_pending=10, max_waiting=None))
    for i in range(4):
        await bus.publish(f"{n}.a", b"%d" % i)
    p = await bus.puller(n.upper(), "w")
    deliveries = await p.fetch(4, timeout=2)
    assert len(deliveries) == 4
    await bus.close()
    await bus.close()  # twice is fine
    for d, settle, word in zip(deliveries, ("ack", "nak", "term", "in_progress"),
                               ("ack", "nak", "term", "in-progress"), strict=True):
        with pytest.raises(BusError) as err:
            await getattr(d, settle)()
        assert str(err.value) == f"{word} of {n}.a failed: NATS connection closed"
    with pytest.raises(BusError, match=exact(f"fetch from {n.upper()}/w failed: NATS connection closed")):
        await p.fetch(1, timeout=0.5)
    with pytest.raises(BusError, match=exact(f"publish to {n}.a failed: NATS connection closed")):
        await bus.publish(f"{n}.a", b"x")
    await p.unsubscribe()  # quiet: nothing left to release


async def test_fleet_state_is_a_key_value_watcher(nats_server: EmbeddedNats) -> None:
    bus = await connect(ConnectOptions(url=nats_server.url, name="tests"))
    try:
        async with bus.fleet_state(bucket=f"F{next(_ids)}X{os.getpid()}") as fleet:
            assert fleet.latest() == {}
    finally:
        await bus.close()


async def _one_stream(bus: Bus, n: str) -> None:
    await bus.ensure_stream(StreamDef(name=n.upper(), subjects=[f"{n}.>"], retention="work_queue",
                                      duplicate_window_s=60.0, replicas=None))
    await bus.ensure_consumer(n.upper(), ConsumerDef(durable="w", filter_subject=None, ack_wait_s=30,
                                                     max_ack_pending=100, max_waiting=None))


async def test_a_waiting_fetch_hands_over_a_message_as_soon_as_it_arrives(
        nats_server: EmbeddedNats) -> None:
    """The guard of a hop's latency (issue 19): a fetch with room for 50 that found the
    stream empty returns the one message that came, not after its 30 s timeout (nats-py's
    lingering fetch keeps what came until its batch is full or the timeout passed)."""
    bus = await connect(ConnectOptions(url=nats_server.url, name="tests"))
    n = f"jw{next(_ids)}x{os.getpid()}"
    try:
        await _one_stream(bus, n)
        p = await bus.puller(n.upper(), "w")
        fetch = asyncio.create_task(p.fetch(50, 30.0))
        async with asyncio.timeout(5):
            # the fetch found nothing and waits: its request is the consumer's waiting one
            while not ((s := await bus.consumer_stats(n.upper(), "w")) and s.waiting):
                assert not fetch.done()
            await bus.publish(f"{n}.a", b"first")
            got = await fetch
        assert [d.data for d in got] == [b"first"]
        assert got[0].num_delivered == 1 and got[0].seq == 1
        # what a fetch asked for it took: nothing is left on its way to this puller
        for i in range(3):
            await bus.publish(f"{n}.a", b"%d" % i)
        rest = await p.fetch(2, 5.0)
        assert [d.data for d in rest] == [b"0", b"1"]
        for d in [*got, *rest]:
            await d.ack_sync()
        stats = await bus.consumer_stats(n.upper(), "w")
        assert stats is not None and stats.ack_pending == 0 and stats.pending == 1
        await p.unsubscribe()
    finally:
        await bus.close()


async def test_an_empty_fetch_ends_at_its_timeout_with_nothing(nats_server: EmbeddedNats) -> None:
    bus = await connect(ConnectOptions(url=nats_server.url, name="tests"))
    n = f"je{next(_ids)}x{os.getpid()}"
    try:
        await _one_stream(bus, n)
        p = await bus.puller(n.upper(), "w")
        assert await p.fetch(10, 0.2) == []
        await bus.publish(f"{n}.a", b"late")  # the expired request took nothing with it
        (d,) = await p.fetch(10, 5.0)
        assert d.data == b"late" and d.num_delivered == 1
        await d.ack()
        await p.unsubscribe()
    finally:
        await bus.close()


async def test_a_puback_that_never_comes_times_out(nats_server: EmbeddedNats) -> None:
    """PubAcks share one timer per second (issue 19): a publish whose answer never
    comes (here a plain subscriber, not a stream, takes the subject) still ends as
    ``TimedOut`` at about its timeout, and later publishes are not held by it."""
    bus = await connect(ConnectOptions(url=nats_server.url, name="tests"))
    n = f"jt{next(_ids)}x{os.getpid()}"
    try:
        await _one_stream(bus, n)
        assert isinstance(bus, JetStreamBus)
        silent = await bus.nc.subscribe(f"{n}silent.x")  # never answers
        async with asyncio.timeout(5):
            with pytest.raises(TimedOut, match=exact(f"publish to {n}silent.x timed out")):
                await bus.publish(f"{n}silent.x", b"lost", timeout=0.3)
            assert await bus.publish(f"{n}.a", b"kept", msg_id="k") is False
            assert await bus.publish(f"{n}.a", b"kept", msg_id="k") is True
        await silent.unsubscribe()
    finally:
        await bus.close()
