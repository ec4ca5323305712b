"""An agent that asks for a structured answer (``test_llm_cache_run``)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from matrix_p2p.agent import Agent, Context
from matrix_p2p.envelope import Task


class Grade(msgspec.Struct):
    verdict: Literal["pass", "fail"]
    score: Annotated[int, msgspec.Meta(ge=1, le=10)]
    reasons: list[str]


class Grader(Agent):
    async def handle(self, task: Task, ctx: Context) -> None:
        reply = (await ctx.chat([{"role": "user", "content": f"Grade: {task.row['text']}"}],
                                response_format=Grade)).unwrap()
        grade = reply.parsed
        assert isinstance(grade, Grade)
        ctx.say(reply.text)
        task.state["grade"] = msgspec.to_builtins(grade)
