from __future__ import annotations

import asyncio

from matrix_p2p.aio import pause, wait_any


async def test_pause_ends_early_when_stopped() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_soon(stop.set)
    async with asyncio.timeout(5):
        assert await pause(60.0, stop) is True


async def test_pause_runs_out_when_not_stopped() -> None:
    assert await pause(0.01, asyncio.Event()) is False
    assert await pause(0.01) is False


async def test_wait_any_returns_on_the_first_event_and_leaves_no_waiters() -> None:
    a, b = asyncio.Event(), asyncio.Event()
    before = len(asyncio.all_tasks())
    asyncio.get_running_loop().call_soon(b.set)
    async with asyncio.timeout(5):
        await wait_any(a, b)
    assert len(asyncio.all_tasks()) == before
