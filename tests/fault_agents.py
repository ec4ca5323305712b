"""Agents for the fault tests (in process, no LLM)."""

from __future__ import annotations

import asyncio

from matrix_p2p.agent import Agent, Context
from matrix_p2p.envelope import Task

# workflow name -> (how many copies must be inside the agent together, who is inside)
GATES: dict[str, tuple[int, asyncio.Event, list[str]]] = {}


def gate(workflow: str, copies: int) -> asyncio.Event:
    """Hold role ``a``'s first hop until ``copies`` deliveries of one task are in it."""
    ev = asyncio.Event()
    GATES[workflow] = (copies, ev, [])
    return ev


class Gate(Agent):
    """Says a short turn; at hop 0, first waits until every copy of the task is inside."""

    async def handle(self, task: Task, ctx: Context) -> None:
        held = GATES.get(task.workflow)
        if held is not None and task.hop == 0:
            copies, ev, inside = held
            inside.append(task.id)
            if inside.count(task.id) >= copies:
                ev.set()
            await ev.wait()
        ctx.say("turn")
