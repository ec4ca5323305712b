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


# workflow name -> set when its agent is "fixed" (see ``Broken``)
FIXED: dict[str, asyncio.Event] = {}


class Broken(Agent):
    """An agent with a bug, then fixed. Until ``FIXED[workflow]`` is set, rows with
    ``behaviour: bug`` raise (an agent bug: the task fails at once) and the others wait
    for the fix, so they are still unfinished when a broken run stops; once set, every
    task ends done."""

    async def handle(self, task: Task, ctx: Context) -> None:
        fixed = FIXED.setdefault(task.workflow, asyncio.Event())
        if not fixed.is_set():
            if task.row.get("behaviour") == "bug":
                raise AttributeError("'Row' object has no attribute 'question_17'")
            await fixed.wait()
        ctx.say("turn")
