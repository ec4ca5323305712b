"""The LLM roles: filter, scorer and question writer. Prompts come from the workflow file.

Each sends the role's ``system`` message and a user message holding the
document (its first ``options.max_doc_chars`` characters, default 8,000)
followed by the role's ``prompt``, then parses the reply (``matrix_p2p_agents.nr.parse``).

Error handling: an LLM error becomes the runtime's decision (transient ->
``RetryLater``, else ``FailTask``) through ``unwrap``. A reply that does not
parse is recorded as a turn with its ``parse_error`` and the model is asked
again in the same hop with another ``seed`` (a nak would redeliver the same
envelope, and a seeded or greedy model would give the same reply), up to
``options.attempts`` (default 3) calls; then the task fails with the last
parse error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from matrix_p2p_agents.nr import parse
from matrix_p2p_agents.nr.common import document, drop, keep

from matrix_p2p.agent import Agent, Context
from matrix_p2p.envelope import Task, Turn
from matrix_p2p.errors import ConfigError, FailTask
from matrix_p2p.workflow.spec import RoleSpec, WorkflowSpec

_T = TypeVar("_T")
TRUNCATED = "\n[... document truncated]"


def user_message(doc: str, prompt: str, max_chars: int) -> str:
    """The document (cut at ``max_chars``, and marked so) and the role's instructions."""
    body = doc if len(doc) <= max_chars else doc[:max_chars] + TRUNCATED
    return f"Document:\n<<<\n{body}\n>>>\n\n{prompt}"


class _LLMRole(Agent):
    def __init__(self, role: RoleSpec, spec: WorkflowSpec) -> None:
        super().__init__(role, spec)
        opts = role.options
        self.field = str(opts.get("text_field", "text"))
        self.max_doc_chars = int(opts.get("max_doc_chars", 8000))
        self.attempts = int(opts.get("attempts", 3))
        if self.attempts < 1 or self.max_doc_chars < 1:
            raise self.bad_option("attempts and max_doc_chars must be at least 1")

    def bad_option(self, msg: str) -> ConfigError:
        return ConfigError(f"{self.spec.path}: roles.{self.role.name}: {msg}")

    async def ask(self, task: Task, ctx: Context, parser: Callable[[str], _T],
                  draw: int = 0, said: list[Turn] | None = None) -> _T:
        """Chat until ``parser`` accepts a reply (see the module's error handling);
        ``draw`` > 0 asks again with other seeds (another question of the same document);
        ``said`` collects the turns (one per call), for ``ctx.spawn(turns=...)``."""
        turns: list[Turn] = [] if said is None else said
        user = user_message(document(task, self.field), self.role.prompt, self.max_doc_chars)
        messages = [{"role": "system", "content": self.role.system},
                    {"role": "user", "content": user}]
        error = ""
        for attempt in range(self.attempts):
            seed = task.seed + draw * self.attempts + attempt
            reply = (await ctx.chat(messages, seed=seed)).unwrap()
            try:
                parsed = parser(reply.text)
            except parse.ParseError as exc:
                error = str(exc)
                turns.append(ctx.say(reply.text, parse_error=error, attempt=attempt + 1))
                continue
            turns.append(ctx.say(reply.text, attempt=attempt + 1))
            return parsed
        raise FailTask(f"{self.role.name}: no usable reply in {self.attempts} attempts: {error}")


class LLMFilter(_LLMRole):
    """Does the document hold reasoning worth a question? ``Decision: NO`` drops it
    with the reason ``<role>:no`` (``llm_filter:no``)."""

    async def handle(self, task: Task, ctx: Context) -> None:
        if await self.ask(task, ctx, parse.parse_decision):
            keep(task)
        else:
            drop(task, f"{self.role.name}:no")


class Scorer(_LLMRole):
    """Scores ``options.dimensions`` (0-10 each); keeps the document when their mean
    reaches ``options.threshold`` (default 6) and each reaches ``options.min_each``
    (default 0). Reasons: ``score<T``, ``score:<dimension><M>``.
    """

    def __init__(self, role: RoleSpec, spec: WorkflowSpec) -> None:
        super().__init__(role, spec)
        dims = role.options.get("dimensions")
        if not isinstance(dims, list) or not dims or not all(isinstance(d, str) for d in dims):
            raise self.bad_option("options.dimensions must be a non-empty list of names")
        self.dimensions: list[str] = dims
        self.threshold = float(role.options.get("threshold", 6))
        self.min_each = float(role.options.get("min_each", 0))
        # the prompt must ask for every dimension, or every reply fails to parse
        missing = [d for d in dims if f"{d}: N/10" not in role.prompt]
        if missing:
            raise self.bad_option(f"prompt has no line '{missing[0]}: N/10' for a dimension")

    async def handle(self, task: Task, ctx: Context) -> None:
        scores = await self.ask(task, ctx, lambda text: parse.parse_scores(text, self.dimensions))
        mean = round(sum(scores.values()) / len(scores), 3)
        task.state["scores"] = {**scores, "mean": mean}
        low = [d for d, v in scores.items() if v < self.min_each]
        if mean < self.threshold:
            drop(task, f"score<{self.threshold:g}")
        elif low:
            drop(task, f"score:{low[0]}<{self.min_each:g}")
        else:
            keep(task)


class QuestionWriter(_LLMRole):
    """Writes a self-contained question and its reference answer; the document is kept.

    With ``options.questions`` N > 1 it fans out: N questions, each a child task
    (``<id>/<i>``, its row the document's, ``parent`` the document's task) with
    ``question``, ``reference_answer``, ``question_index`` and ``kept: true``, whose
    dialogue is the document's filter turns and then the writer turns of its own
    question only (its row counts only those). The document's own task ends as done
    with ``children: N`` and no ``kept``: it is not a row to train on, its children
    are. Seeds follow the index, so a redelivered hop asks the same N questions again.
    """

    def __init__(self, role: RoleSpec, spec: WorkflowSpec) -> None:
        super().__init__(role, spec)
        self.questions = int(role.options.get("questions", 1))
        if self.questions < 1:
            raise self.bad_option("options.questions must be at least 1")

    async def handle(self, task: Task, ctx: Context) -> None:
        if self.questions == 1:
            question, answer = await self.ask(task, ctx, parse.parse_question)
            task.state["question"] = question
            task.state["reference_answer"] = answer
            keep(task)
            return
        # each question's writer turns go to its child alone; the document's task keeps
        # none and, once it fans out, no filter status either (hop.fan_out)
        for i in range(self.questions):
            own: list[Turn] = []
            question, answer = await self.ask(task, ctx, parse.parse_question, draw=i, said=own)
            ctx.spawn(state={"question": question, "reference_answer": answer,
                             "question_index": i, "kept": True, "filter_reason": None},
                      turns=own)
