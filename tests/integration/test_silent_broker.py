"""A broker that goes silent (SIGSTOP: no reset, no close, like a host cut off) is noticed
by the client's own pings within seconds, not nats-py's default minutes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.bus import ConnectOptions, connect
from matrix_p2p.bus.connection import MAX_OUTSTANDING_PINGS, PING_INTERVAL_S


async def test_a_silent_broker_is_noticed_within_seconds(tmp_path: Path) -> None:
    server = EmbeddedNats(store_dir=tmp_path / "nats", sync="interval")
    server.start()
    stopped = False
    try:
        bus = await connect(ConnectOptions(url=server.url, name="silent"))
        nc = bus.nc
        assert nc.is_connected
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # alive, socket open, answering nothing
        stopped = True
        t0 = time.monotonic()
        bound = PING_INTERVAL_S * (MAX_OUTSTANDING_PINGS + 1) + 8  # slack for a loaded machine
        async with asyncio.timeout(bound):
            while nc.is_connected:  # noqa: ASYNC110 (the client exposes no event for it)
                await asyncio.sleep(0.1)  # polls the client's state; the pings drive it
        print(f"noticed after {time.monotonic() - t0:.1f}s")
        os.kill(pid, signal.SIGCONT)
        stopped = False
        await bus.close()
    finally:
        if stopped and server.pid is not None:
            os.kill(server.pid, signal.SIGCONT)
        server.cleanup()
