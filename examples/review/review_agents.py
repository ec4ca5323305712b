"""Agents and router of examples/review/review.yaml (see docs/agents.md)."""

from __future__ import annotations

from matrix_p2p import Agent, Context, Done, FailTask, Forward, Task
from matrix_p2p.runtime.routing import Decision
from matrix_p2p.workflow.spec import WorkflowSpec


class Writer(Agent):
    """Drafts an answer to ``task.row["question"]``, or revises the last one."""

    async def handle(self, task: Task, ctx: Context) -> None:
        question = task.row.get("question")
        if not question:
            raise FailTask("row has no 'question'")  # the row is wrong: retrying won't help
        messages = [{"role": "system", "content": self.role.system},
                    {"role": "user", "content": question}]
        if "feedback" in task.state:
            messages.append({"role": "user", "content": f"Revise: {task.state['feedback']}"})
        reply = (await ctx.chat(messages)).unwrap()  # an LLM error: retry later or fail
        task.state["draft"] = reply.text
        ctx.say(reply.text)


class Reviewer(Agent):
    """Accepts the draft, or asks for one more round (at most ``options.max_rounds``)."""

    async def handle(self, task: Task, ctx: Context) -> None:
        messages = [{"role": "system", "content": self.role.system},
                    {"role": "user", "content": task.state.get("draft", "")}]
        reply = (await ctx.chat(messages)).unwrap()
        rounds = task.state.get("rounds", 0) + 1
        task.state["rounds"] = rounds
        wants_revision = "REVISE" in reply.text.upper()
        task.state["accepted"] = not wants_revision or rounds >= self.role.options["max_rounds"]
        task.state["feedback"] = reply.text
        ctx.say(reply.text, verdict="revise" if wants_revision else "accept")


class ReviewRouter:
    """``type: python`` routing: the writer first, then reviewer and writer in turn until
    the reviewer accepts."""

    def entry(self, spec: WorkflowSpec) -> str:
        return "writer"

    def route(self, task: Task, spec: WorkflowSpec) -> Decision:
        if task.role == "writer":
            return Forward(role="reviewer")
        if task.state.get("accepted"):
            return Done(reason="accepted")
        return Forward(role="writer")
