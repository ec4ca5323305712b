"""Agents for chaos runs: slow enough that crashes land mid-hop, no LLM."""

from __future__ import annotations

import asyncio
import random

from matrix_p2p.agent import Agent, Context
from matrix_p2p.envelope import Task


class Sleeper(Agent):
    """Takes ``delay_s`` (0.5x-1.5x, from the task's seed and hop) and says a short turn."""

    async def handle(self, task: Task, ctx: Context) -> None:
        delay = float(self.role.options.get("delay_s", 0.1))
        rng = random.Random(task.seed * 1000 + task.hop)
        await asyncio.sleep(delay * (0.5 + rng.random()))
        ctx.say("y" * int(self.role.options.get("reply_chars", 50)))


class Splitter(Agent):
    """Fan-out: after ``delay_s`` says a turn and spawns ``children`` child tasks, the
    same number on every delivery (a deterministic agent)."""

    async def handle(self, task: Task, ctx: Context) -> None:
        delay = float(self.role.options.get("delay_s", 0.1))
        rng = random.Random(task.seed * 1000 + task.hop)
        await asyncio.sleep(delay * (0.5 + rng.random()))
        ctx.say("split")
        for i in range(int(self.role.options.get("children", 3))):
            ctx.spawn(state={"part": i})
