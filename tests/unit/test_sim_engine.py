"""The continuous batching engine, driven by a fake sleep (no real time)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from matrix_p2p.sim.config import SimConfig
from matrix_p2p.sim.engine import BatchCore, Engine, QueueFull, Sequence


class FakeTime:
    """Records step durations; each step only yields to the loop."""

    def __init__(self) -> None:
        self.now = 0.0
        self.steps: list[float] = []

    async def sleep(self, dt: float) -> None:
        self.steps.append(dt)
        self.now += dt
        await asyncio.sleep(0)


async def _finish(seqs: list[Sequence]) -> None:
    async with asyncio.timeout(5):
        for seq in seqs:
            while seq.active:
                await seq.changed.wait()
                seq.changed.clear()


@pytest.fixture
async def engine_and_time() -> AsyncIterator[tuple[Engine, FakeTime]]:
    fake = FakeTime()
    engine = Engine(
        SimConfig(max_num_seqs=8, tokens_per_step=2, step_base_s=0.01, step_per_seq_s=0.001),
        sleep=fake.sleep,
    )
    engine.start()
    yield engine, fake
    await engine.stop()


async def test_never_more_than_max_num_seqs(engine_and_time: tuple[Engine, FakeTime]) -> None:
    engine, fake = engine_and_time
    seqs = [engine.submit(Sequence(10, 1 + i % 13)) for i in range(200)]
    await _finish(seqs)
    core = engine.core
    assert core.max_running_seen == 8
    assert core.completed == 200
    assert all(s.state == "finished" and s.generated == s.target_tokens for s in seqs)
    assert core.generation_tokens_total == sum(s.target_tokens for s in seqs)
    assert core.prompt_tokens_total == 2000
    # every step's duration corresponds to a batch of 1..8 sequences
    assert all(0.011 - 1e-9 <= dt <= 0.018 + 1e-9 for dt in fake.steps)


async def test_waiting_queue_is_fifo(engine_and_time: tuple[Engine, FakeTime]) -> None:
    engine, _ = engine_and_time
    seqs = [engine.submit(Sequence(1, 4)) for _ in range(50)]
    await _finish(seqs)
    assert list(engine.core.admission_order)[-50:] == [s.seq_id for s in seqs]


async def test_step_time_and_tokens_per_step() -> None:
    fake = FakeTime()
    engine = Engine(
        SimConfig(tokens_per_step=4, step_base_s=0.01, step_per_seq_s=0.001, slow_factor=2.0),
        sleep=fake.sleep,
    )
    engine.start()
    try:
        await _finish([engine.submit(Sequence(1, 10))])  # 4 + 4 + 2 tokens
        assert fake.steps == pytest.approx([0.022, 0.022, 0.022])
    finally:
        await engine.stop()


async def test_idle_engine_does_not_step(engine_and_time: tuple[Engine, FakeTime]) -> None:
    engine, fake = engine_and_time
    await _finish([engine.submit(Sequence(1, 2))])
    steps = len(fake.steps)
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(fake.steps) == steps
    await _finish([engine.submit(Sequence(1, 2))])  # wakes again on submit
    assert len(fake.steps) == steps + 1


async def test_stream_sequences_are_woken_every_step(
    engine_and_time: tuple[Engine, FakeTime],
) -> None:
    engine, _ = engine_and_time
    seq = engine.submit(Sequence(1, 6, stream=True))
    seen = []
    async with asyncio.timeout(5):
        while seq.active:
            await seq.changed.wait()
            seq.changed.clear()
            seen.append(seq.generated)
    assert seen == [2, 4, 6]


async def test_stop_wakes_everyone_and_is_idempotent() -> None:
    never = asyncio.Event()

    async def stuck_sleep(dt: float) -> None:
        await never.wait()

    engine = Engine(SimConfig(max_num_seqs=2), sleep=stuck_sleep)
    engine.start()
    seqs = [engine.submit(Sequence(1, 5)) for _ in range(4)]
    async with asyncio.timeout(5):
        while len(engine.core.running) < 2:  # noqa: ASYNC110 - one loop turn admits them
            await asyncio.sleep(0)
    await engine.stop()
    await engine.stop()
    assert not engine.running
    assert [s.state for s in seqs] == ["stopped"] * 4
    assert all(s.changed.is_set() for s in seqs)


def test_abort_frees_waiting_and_running() -> None:
    core = BatchCore(max_num_seqs=1)
    a, b = Sequence(1, 5), Sequence(1, 5)
    core.add(a)
    core.add(b)
    core.admit()
    core.abort(b)  # waiting
    assert list(core.waiting) == []
    core.abort(a)  # running: leaves at the step end without tokens
    assert core.advance(1) == []
    assert core.running == []
    assert a.generated == 0
    assert core.aborted == 2
    assert core.idle


def test_max_waiting_counts_only_overflow() -> None:
    core = BatchCore(max_num_seqs=2, max_waiting=1)
    for _ in range(3):  # two fit in the batch, one waits
        core.add(Sequence(1, 1))
    with pytest.raises(QueueFull, match=r"waiting queue full \(1\)"):
        core.add(Sequence(1, 1))
    assert core.rejected == 1
    core.admit()
    assert len(core.running) == 2
    assert len(core.waiting) == 1
    assert len(core.advance(1)) == 2
    core.add(Sequence(1, 1))  # slots are free again
