"""FairQueue: FIFO among waiters, no barging, whoever leaves the head wakes the next."""

from __future__ import annotations

import asyncio
import time

import pytest

from matrix_p2p.llm.admission import FairQueue, Later


class Slots:
    """A counter of free slots behind one FairQueue; records who got one, in order."""

    def __init__(self, free: int = 0) -> None:
        self.free = free
        self.queue = FairQueue(time.monotonic)
        self.order: list[str] = []

    async def take(self, name: str) -> str:
        def turn(now: float, at_head: bool) -> str | Later:
            if at_head and self.free > 0:
                self.free -= 1
                self.order.append(name)
                return name
            return Later(now + 60.0)  # only a wake() moves this queue

        return await self.queue.wait(turn)

    def give(self) -> None:
        self.free += 1
        self.queue.wake()


async def queued(slots: Slots, n: int) -> None:
    # One turn of the loop runs a new task up to its first await: in the queue by then.
    await asyncio.sleep(0)
    assert len(slots.queue) == n


async def test_uncontended_take_does_not_queue() -> None:
    slots = Slots(free=1)
    assert await slots.take("a") == "a"
    assert len(slots.queue) == 0


async def test_waiters_are_served_in_arrival_order() -> None:
    slots = Slots()
    tasks = []
    for name in "abc":
        tasks.append(asyncio.create_task(slots.take(name)))
        await queued(slots, len(tasks))
    for _ in tasks:
        slots.give()
    async with asyncio.timeout(2):
        await asyncio.gather(*tasks)
    assert slots.order == ["a", "b", "c"]
    assert len(slots.queue) == 0


async def test_a_newcomer_does_not_barge_past_the_queue() -> None:
    slots = Slots()
    first = asyncio.create_task(slots.take("first"))
    await queued(slots, 1)
    slots.free = 1  # a slot frees without a wake(): the head has not looked yet
    late = asyncio.create_task(slots.take("late"))
    await queued(slots, 2)
    slots.queue.wake()
    await asyncio.wait_for(first, 2)
    assert slots.order == ["first"]
    assert not late.done()
    slots.give()
    await asyncio.wait_for(late, 2)
    assert slots.order == ["first", "late"]


async def test_a_cancelled_head_wakes_the_next() -> None:
    slots = Slots()
    head = asyncio.create_task(slots.take("head"))
    await queued(slots, 1)
    nxt = asyncio.create_task(slots.take("next"))
    await queued(slots, 2)
    slots.free = 1
    head.cancel()
    with pytest.raises(asyncio.CancelledError):
        await head
    assert await asyncio.wait_for(nxt, 2) == "next"
    assert len(slots.queue) == 0


async def test_later_times_out_into_a_fresh_look() -> None:
    looks: list[bool] = []

    def turn(now: float, at_head: bool) -> str | Later:
        looks.append(at_head)
        return "gave up" if len(looks) == 3 else Later(now + 0.001)

    queue = FairQueue(time.monotonic)
    assert await asyncio.wait_for(queue.wait(turn), 2) == "gave up"
    assert looks == [True, True, True]
    assert len(queue) == 0
