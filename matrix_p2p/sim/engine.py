"""Continuous batching, as vLLM's scheduler does it, without a model.

``BatchCore`` is the pure state: a running batch of at most ``max_num_seqs``
sequences and a FIFO waiting queue. ``Engine`` is the async shell: one loop
task that, while there is work, admits waiting sequences into free slots,
sleeps for the step time, then gives every running sequence
``tokens_per_step`` tokens. A sequence that reaches its target leaves the
batch at the end of that step, so its slot is reused by the next step.
When there is no work the loop waits on an event: no polling.

Prefill is modelled as ``prefill_per_token_s`` extra seconds per prompt token
of the sequences joining in a step (0 by default: ignored).

``sleep`` is injectable so that unit tests can drive steps without real time.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from matrix_p2p.sim.config import SimConfig

SeqState = Literal["waiting", "running", "finished", "aborted", "stopped"]

_ids = itertools.count()


class QueueFull(Exception):
    """The waiting queue is at ``max_waiting``: answer 429."""


@dataclass(eq=False)
class Sequence:
    """One request inside the engine. ``changed`` is set on every step (when
    ``stream``) and when the sequence leaves the engine."""

    prompt_tokens: int
    target_tokens: int
    finish_reason: str = "stop"
    stream: bool = False
    generated: int = 0
    state: SeqState = "waiting"
    seq_id: int = field(default_factory=lambda: next(_ids))
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def active(self) -> bool:
        return self.state in ("waiting", "running")


class BatchCore:
    """Pure scheduler state and counters; every method is synchronous."""

    def __init__(self, max_num_seqs: int, max_waiting: int | None = None) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_waiting = max_waiting
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.max_running_seen = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.finished_by_reason: Counter[str] = Counter()
        self.aborted = 0
        self.rejected = 0
        self.admission_order: deque[int] = deque(maxlen=10_000)  # seq ids, for tests and debugging

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting

    @property
    def completed(self) -> int:
        return sum(self.finished_by_reason.values())

    def overflow(self) -> int:
        """Sequences that could not join the next step even if it started now."""
        return max(0, len(self.running) + len(self.waiting) - self.max_num_seqs)

    def add(self, seq: Sequence) -> None:
        """Queue ``seq``; raises ``QueueFull`` if the overflow is at ``max_waiting``."""
        if self.max_waiting is not None and self.overflow() >= self.max_waiting:
            self.rejected += 1
            raise QueueFull(f"waiting queue full ({self.max_waiting})")
        seq.state = "waiting"
        self.waiting.append(seq)

    def abort(self, seq: Sequence) -> None:
        """Remove ``seq`` (client went away). A running one leaves at the step end."""
        if seq.state == "waiting":
            self.waiting.remove(seq)
        elif seq.state != "running":
            return
        seq.state = "aborted"
        self.aborted += 1

    def admit(self) -> list[Sequence]:
        """Move waiting sequences into free slots, FIFO. Returns those that joined."""
        joined: list[Sequence] = []
        free = self.max_num_seqs - len(self.running)
        while free > 0 and self.waiting:
            seq = self.waiting.popleft()
            seq.state = "running"
            joined.append(seq)
            self.admission_order.append(seq.seq_id)
            self.prompt_tokens_total += seq.prompt_tokens
            free -= 1
        self.running.extend(joined)
        self.max_running_seen = max(self.max_running_seen, len(self.running))
        return joined

    def step_s(self, config: SimConfig, joined: list[Sequence]) -> float:
        prefill = config.prefill_per_token_s * sum(s.prompt_tokens for s in joined)
        return config.step_s(len(self.running)) + prefill * config.slow_factor

    def advance(self, tokens_per_step: int) -> list[Sequence]:
        """End a step: give tokens, drop aborted ones, return the finished ones."""
        finished: list[Sequence] = []
        still: list[Sequence] = []
        generated = 0
        for seq in self.running:
            if seq.state != "running":
                continue
            got = min(tokens_per_step, seq.target_tokens - seq.generated)
            seq.generated += got
            generated += got
            if seq.generated >= seq.target_tokens:
                seq.state = "finished"
                self.finished_by_reason[seq.finish_reason] += 1
                finished.append(seq)
            else:
                still.append(seq)
        self.running = still
        self.generation_tokens_total += generated
        return finished

    def drain(self) -> list[Sequence]:
        """Take every sequence out (engine stopping)."""
        out = [s for s in self.running if s.state == "running"]
        out.extend(self.waiting)
        self.running = []
        self.waiting.clear()
        for seq in out:
            seq.state = "stopped"
        return out


class Engine:
    """The engine loop task of one replica.

    Error handling: the loop has no I/O and nothing to retry; an unexpected
    exception ends the task and is re-raised by ``stop()``. On ``stop()``
    every sequence still inside ends in state ``stopped`` and is woken.
    """

    def __init__(
        self,
        config: SimConfig,
        *,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.core = BatchCore(config.max_num_seqs, config.max_waiting)
        self._sleep = sleep
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def set_config(self, config: SimConfig) -> None:
        """Swap the config (faults at run time); the batch shape stays as it was."""
        self.config = config
        self.core.max_waiting = config.max_waiting

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sim-engine")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def submit(self, seq: Sequence) -> Sequence:
        """Queue ``seq`` (raises ``QueueFull``) and wake the loop."""
        self.core.add(seq)
        self._wake.set()
        return seq

    def abort(self, seq: Sequence) -> None:
        if seq.active:
            self.core.abort(seq)
            seq.changed.set()

    async def _run(self) -> None:
        core = self.core
        while True:
            if core.idle:
                self._wake.clear()
                await self._wake.wait()
                continue
            joined = core.admit()
            await self._sleep(core.step_s(self.config, joined))
            for seq in core.advance(self.config.tokens_per_step):
                seq.changed.set()
            for seq in core.running:
                if seq.stream:
                    seq.changed.set()

    async def stop(self) -> None:
        """Stop the loop and wake every sequence still inside. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        for seq in self.core.drain():
            seq.changed.set()
        if task is not None and not task.cancelled() and (exc := task.exception()) is not None:
            raise exc
