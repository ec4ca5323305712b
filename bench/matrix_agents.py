"""Meta's Matrix dummy Coral agents (fair-matrix 0.2.6,
``matrix/agents/examples/ts_interaction_dummy.py``), ported one to one to our runtime
for ``bench --only matrix``: the same texts, lengths, random draws and stop rule.

Matrix's flow (``coral_sequential``): an injected student message with the question,
then teacher, answer extractor, student, answer extractor, answer matcher, again
until the matcher reports agreement or its ``rated_turns`` reach ``max_turns``. Our
port puts the question in the task's row instead of an injected turn, runs the
extractor as two roles (our cycle routing names each position by its role) and ends
the task when the matcher sets ``state["done"]``.
"""

from __future__ import annotations

import random
import time

from matrix_p2p.agent import Agent, Context
from matrix_p2p.envelope import Task, Usage

# the same ~900 characters as Matrix's dummy agents
_BASE_TEXT = (
    "To find the amount of trade discount, we need to subtract the net price from the list price. "
    "List price equals four dollars and ninety five cents. "
    "Net price equals two dollars and ninety five cents. "
    "Trade discount equals list price minus net price. Therefore the trade discount is two dollars. "
    "So the amount of trade discount is two dollars. The correct answer is option I. "
    "Let me verify this calculation by working through the problem step by step. "
    "First we identify the given values in the problem. "
    "The list price is the original price before any discounts. "
    "The net price is what the customer actually pays after the discount is applied. "
    "To find the discount amount we simply subtract the net price from the list price. "
    "This gives us the total savings or discount that was applied to the purchase. "
    "In this case the calculation shows that the customer saved two dollars on this transaction. "
)
_BASE_LEN = len(_BASE_TEXT)
_LETTERS = ("A", "B", "C", "D", "E", "F", "G", "H", "I", "J")
_ANSWER_OPTIONS = ("A", "B", "C", "D", "E")


def generate_text(length: int) -> str:
    if length <= _BASE_LEN:
        return _BASE_TEXT[:length]
    return (_BASE_TEXT * (length // _BASE_LEN + 1))[:length]


def _say(ctx: Context, text: str, prompt: int, completion: int, **meta: object) -> None:
    turn = ctx.say(text, response_timestamp=time.time(), finish_reason="stop", status_ok=True,
                   **meta)
    turn.usage = Usage(prompt_tokens=prompt, completion_tokens=completion)


class DummyCoralAgent(Agent):
    """Teacher and student: ``generation_length`` characters, +- ``length_delta``."""

    async def handle(self, task: Task, ctx: Context) -> None:
        opts = self.role.options
        base = int(opts.get("generation_length", 1024))
        delta = float(opts.get("length_delta", 0.2))
        text = generate_text(random.randint(int(base * (1 - delta)), int(base * (1 + delta))))
        _say(ctx, text, random.randint(200, 500), len(text) // 4)


class DummyCoralExtractionAgent(Agent):
    """A random letter among the question's options."""

    async def handle(self, task: Task, ctx: Context) -> None:
        options = [f"({k}) {v}" for k, v in dict(task.row.get("choices", {})).items()]
        letters = [o[1] for o in options if o.startswith("(") and len(o) > 2]
        answer = random.choice(letters or list(_LETTERS))
        _say(ctx, f"({answer})", random.randint(300, 400), random.randint(2, 5),
             extracted_answer=answer, valid_answer=True, correct=answer == task.row.get("answer"))


class DummyCoralMatchAgent(Agent):
    """Agreement with 10 % chance before ``expected_turns`` rated turns, 90 % at or after;
    the dialogue ends on agreement or at ``max_turns`` rated turns (Matrix's ``is_done``)."""

    async def handle(self, task: Task, ctx: Context) -> None:
        opts = self.role.options
        # Matrix's one matcher counts its own turns; ours is two roles: count both
        rated_turns = 1 + sum(1 for t in task.turns if "rated_turns" in t.meta)
        if rated_turns < int(opts.get("expected_turns", 3)):
            agreement = random.randint(1, 10) == 1
        else:
            agreement = random.randint(1, 10) <= 9
        answer = _ANSWER_OPTIONS[random.randint(0, 4)]
        belief = {"student": answer, "teacher": answer}
        if not agreement:
            belief["teacher"] = _ANSWER_OPTIONS[(random.randint(0, 4) + 1) % 5]
        correct = agreement and task.row.get("answer") == answer
        ctx.say("", status_ok=True, matched_answer=belief, agreement=agreement,
                agreement_correctness=correct, rated_turns=rated_turns)
        if agreement or rated_turns >= int(opts.get("max_turns", 10)):
            task.state["done"] = True
            task.state["success"] = correct
