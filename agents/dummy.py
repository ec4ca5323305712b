"""Instant agents with no LLM: for tests and the runtime-overhead benchmark.

``Talker`` appends a fixed-size turn; ``Decider`` ends the task after a number
of rounds drawn from the task's seed (a long tail: most tasks end early, a few
run long), like a Coral dialogue whose model answers instantly.
"""

from __future__ import annotations

import random

from matrix_p2p.agent import Agent, Context
from matrix_p2p.envelope import Task
from matrix_p2p.errors import FailTask, RetryLater


class Talker(Agent):
    async def handle(self, task: Task, ctx: Context) -> None:
        size = int(self.role.options.get("reply_chars", 200))
        ctx.say("x" * size)


class Decider(Agent):
    """Stops after ``rounds`` rounds, drawn per task: geometric with ``p_stop``."""

    async def handle(self, task: Task, ctx: Context) -> None:
        opts = self.role.options
        rng = random.Random(task.seed)
        p_stop = float(opts.get("p_stop", 0.5))
        rounds = 1
        while rng.random() > p_stop and rounds < int(opts.get("max_rounds", 20)):
            rounds += 1
        done_rounds = int(task.state.get("rounds", 0)) + 1
        task.state["rounds"] = done_rounds
        task.state["agreed"] = done_rounds >= rounds
        ctx.say("")


class Flaky(Agent):
    """For tests: behaves as ``row['behaviour']`` says (ok, fail, retry_always, crash, bug,
    fail_first_attempt, slow)."""

    async def handle(self, task: Task, ctx: Context) -> None:
        import asyncio

        behaviour = task.row.get("behaviour", "ok")
        tries = task.state.get("tries", 0)
        if behaviour == "fail":
            raise FailTask("row asked to fail")
        if behaviour == "retry_always":
            raise RetryLater("row asked to retry", after_s=0.05)
        if behaviour == "crash":
            raise RuntimeError("row asked to crash")
        if behaviour == "bug":
            task.row.no_such_method()  # type: ignore[attr-defined]  # an agent bug
        if behaviour == "fail_first_attempt" and "~a" not in task.id:
            raise FailTask("row asked to fail its first attempt")
        if behaviour == "slow":
            await asyncio.sleep(float(task.row.get("seconds", 3.0)))
        task.state["tries"] = tries + 1
        task.state["agreed"] = True
        ctx.say("ok")
