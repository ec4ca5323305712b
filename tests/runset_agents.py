"""Agents for the run-set property test (tests/integration/test_runset_property.py).

``Switchable`` answers at once; a row with ``bad: true`` fails while its
workflow is marked broken, and the agent can interrupt the run (set its stop
event, as Ctrl-C does) after a given number of hops.
"""

from __future__ import annotations

import asyncio

from matrix_p2p.agent import Agent, Context
from matrix_p2p.envelope import Task
from matrix_p2p.errors import FailTask

BROKEN: set[str] = set()  # workflow names whose bad rows fail
# workflow name -> (hops left before the stop event is set, the run's stop event)
INTERRUPT: dict[str, tuple[int, asyncio.Event]] = {}


class Switchable(Agent):
    async def handle(self, task: Task, ctx: Context) -> None:
        held = INTERRUPT.get(task.workflow)
        if held is not None:
            left, stop = held
            if left <= 1:
                stop.set()
                del INTERRUPT[task.workflow]
            else:
                INTERRUPT[task.workflow] = (left - 1, stop)
        if task.row.get("bad") and task.workflow in BROKEN:
            raise FailTask("broken agent")
        task.state["agreed"] = True
        ctx.say("ok")
