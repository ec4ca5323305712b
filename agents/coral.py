"""Collaborative Reasoner (Coral): a teacher and a student discuss a
multiple-choice question until a judge finds that they agree, or the
workflow's ``max_turns`` runs out.

Each turn's parsed answer goes into the turn's ``meta``; the judge writes the
outcome into ``task.state``: ``agreed``, ``answer`` (the agreed letter or
None), ``correct`` (against the row's gold ``answer``), ``rounds``.
"""

from __future__ import annotations

import re
from typing import Any

from matrix_p2p.agent import Agent, Context
from matrix_p2p.envelope import Task
from matrix_p2p.errors import FailTask

ANSWER_RE = re.compile(r"Answer:\s*\(?([A-Z])\b")
VERDICT_RE = re.compile(r"Verdict:\s*(AGREE|DISAGREE)\b", re.IGNORECASE)
FINAL_RE = re.compile(r"Final:\s*\(?([A-Z])\b")


def parse_answer(text: str) -> str | None:
    found = ANSWER_RE.findall(text)
    return found[-1] if found else None


def format_question(row: dict[str, Any]) -> str:
    try:
        question = row["question"]
        choices = row["choices"]
    except KeyError as exc:
        raise FailTask(f"input row has no {exc.args[0]!r} field") from None
    if isinstance(choices, dict):
        lines = [f"{k}) {v}" for k, v in choices.items()]
    else:
        lines = [f"{chr(65 + i)}) {v}" for i, v in enumerate(choices)]
    return f"Question: {question}\n" + "\n".join(lines)


def transcript(task: Task) -> str:
    said = [f"{t.role.capitalize()}: {t.content.strip()}" for t in task.turns if t.role != "judge"]
    return "\n\n".join(said)


class _Discussant(Agent):
    """Teacher and student differ only in their prompts (from the workflow file)."""

    async def handle(self, task: Task, ctx: Context) -> None:
        user = format_question(task.row)
        history = transcript(task)
        if history:
            user += f"\n\nThe discussion so far:\n{history}\n\n{self.role.prompt}"
        else:
            user += f"\n\n{self.role.prompt}"
        messages = [{"role": "system", "content": self.role.system}, {"role": "user", "content": user}]
        reply = (await ctx.chat(messages)).unwrap()
        ctx.say(reply.text, answer=parse_answer(reply.text))


class Teacher(_Discussant):
    pass


class Student(_Discussant):
    pass


class Judge(Agent):
    """Decides whether the latest teacher and student answers agree."""

    async def handle(self, task: Task, ctx: Context) -> None:
        last: dict[str, str | None] = {}
        for turn in task.turns:
            if turn.role != "judge":
                last[turn.role] = turn.meta.get("answer")
        answers = "\n".join(f"{role.capitalize()} — Answer: {a or '?'}" for role, a in last.items())
        user = f"{format_question(task.row)}\n\n{answers}\n\n{self.role.prompt}"
        messages = [{"role": "system", "content": self.role.system}, {"role": "user", "content": user}]
        reply = (await ctx.chat(messages)).unwrap()
        verdict = VERDICT_RE.search(reply.text)
        final = FINAL_RE.search(reply.text)
        given = [a for a in last.values()]
        if verdict is None:
            # An unparsable judge falls back to comparing the parsed answers, and says so.
            agreed = len(given) >= 2 and given[0] is not None and len(set(given)) == 1
            answer = given[0] if agreed else None
            ctx.say(reply.text, verdict=None, fallback=True)
        else:
            agreed = verdict.group(1).upper() == "AGREE"
            answer = final.group(1) if (agreed and final) else (given[0] if agreed else None)
            ctx.say(reply.text, verdict=verdict.group(1).upper(), final=answer)
        rounds = task.state.get("rounds", 0) + 1
        gold = task.row.get("answer")
        task.state.update(
            agreed=agreed,
            answer=answer,
            correct=(answer == gold) if (answer is not None and gold is not None) else False,
            rounds=rounds,
        )
