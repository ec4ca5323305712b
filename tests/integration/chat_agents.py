"""Agents for tests that need a role calling its LLM with nothing else in the way."""

from __future__ import annotations

from matrix_p2p.agent import Agent, Context
from matrix_p2p.envelope import Task


class Asker(Agent):
    """Asks ``row['q']`` once with the workflow's model settings and ends the task."""

    async def handle(self, task: Task, ctx: Context) -> None:
        reply = (await ctx.chat([{"role": "user", "content": str(task.row.get("q", ""))}])).unwrap()
        task.state["answer"] = reply.text
        task.state["agreed"] = True
        ctx.say(reply.text)
