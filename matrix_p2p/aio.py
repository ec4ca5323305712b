"""Small asyncio helpers shared by the long-running loops. Pure asyncio, no I/O."""

from __future__ import annotations

import asyncio


async def wait_any(*events: asyncio.Event) -> None:
    """Return as soon as one of ``events`` is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def pause(seconds: float, stop: asyncio.Event | None = None) -> bool:
    """Wait ``seconds`` (a backoff), ending early when ``stop`` is set. True if stopped."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return False
    return True


def cancels_requested() -> int:
    """How many cancels the current task has been asked for (``Task.cancelling``)."""
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def honour_cancel(before: int) -> None:
    """Raise ``CancelledError`` when the current task was cancelled since
    ``cancels_requested()`` returned ``before`` but what it awaited swallowed the cancel
    (nats-py's fetch: its ``asyncio.wait_for`` on Python 3.11 returns a message that
    raced the cancel, 29 of 40 times in tests/integration/test_fetch_cancel.py). Left
    alone, a cancelled worker would fetch on forever."""
    if cancels_requested() > before:
        raise asyncio.CancelledError
