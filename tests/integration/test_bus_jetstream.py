"""What only the real broker can show: connect failures and a connection that goes away
under deliveries still come out as one-line ``BusError``\\ s."""

from __future__ import annotations

import itertools
import os

import pytest

from matrix_p2p.broker import EmbeddedNats, free_port
from matrix_p2p.bus import BusError, ConnectOptions, ConsumerDef, StreamDef, connect
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
