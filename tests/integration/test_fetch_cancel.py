"""A cancelled fetch is cancelled (the real broker: the in-memory fetch has no such race).

nats-py's ``fetch`` swallows a cancel that races a message's arrival (its
``asyncio.wait_for`` on Python 3.11 returns the message instead): measured here,
29 of 40 such cancels were lost. A worker whose task group was cancelled (a
crash in one slot, Ctrl-C) then fetched on forever. ``JetStreamPuller.fetch``
honours the cancel; this test races the two until enough cancels landed mid-fetch.
"""

from __future__ import annotations

import asyncio
import itertools
import os

from matrix_p2p.bus import Bus, ConsumerDef, StreamDef

_ids = itertools.count()


async def test_a_cancel_racing_a_message_is_never_swallowed(bus: Bus) -> None:
    n = f"fc{next(_ids)}x{os.getpid()}"
    await bus.ensure_stream(StreamDef(name=n.upper(), subjects=[f"{n}.>"], retention="work_queue",
                                          duplicate_window_s=None, replicas=None))
    await bus.ensure_consumer(n.upper(), ConsumerDef(durable="d", filter_subject=f"{n}.x",
                                                         ack_wait_s=30, max_ack_pending=10000,
                                                         max_waiting=None))
    puller = await bus.puller(n.upper(), "d")
    landed = swallowed = 0
    try:
        for i in range(400):
            if landed >= 25:
                break
            fetch = asyncio.create_task(puller.fetch(5, 0.2))
            await asyncio.sleep(0.001 * (i % 5))
            await bus.publish(f"{n}.x", b"m")  # arrives while the cancel is on its way
            if i % 2:
                await asyncio.sleep(0)
            if fetch.done():
                for d in fetch.result():
                    await d.ack()
                continue
            fetch.cancel()
            landed += 1
            try:
                await fetch
                swallowed += 1
            except asyncio.CancelledError:
                pass
    finally:
        await puller.unsubscribe()
    assert landed >= 10, f"only {landed} cancels landed mid-fetch: the race did not happen"
    assert swallowed == 0, f"{swallowed} of {landed} cancels of a fetch were swallowed"
