"""An instant document filter for the summary tests: keeps the rows marked ``keep`` and
fans each kept one out into ``questions`` children, as natural_reasoning's writer does;
the first attempt of a row marked ``fail_first`` fails."""

from __future__ import annotations

from matrix_p2p.agent import Agent, Context
from matrix_p2p.envelope import Task
from matrix_p2p.errors import FailTask


class Sieve(Agent):
    async def handle(self, task: Task, ctx: Context) -> None:
        if task.row.get("fail_first") and "~a" not in task.id:
            raise FailTask("the first attempt fails")  # --retry-failed's next attempt passes
        ctx.say("seen")  # one turn: the cycle's max_turns ends the task (and its children)
        if not task.row.get("keep"):
            task.state.update(kept=False, filter_reason=str(task.row.get("why", "short")))
            return
        for i in range(int(task.row.get("questions", 0))):
            ctx.spawn(state={"question": f"q{i}", "question_index": i, "kept": True,
                             "filter_reason": None})
        task.state.update(kept=True, filter_reason=None, score=task.row.get("score"))
