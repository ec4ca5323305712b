"""A row as one training conversation, seen from the assistant's side. Pure.

The workflow's ``export:`` section says who is who (``resolve.view_of`` turns it into
a ``View``): the assistant role's turns are ``assistant`` messages, the user roles'
turns are ``user`` messages, turns of ``tool_role`` are ``tool`` messages, and every
other role's turns (a judge, a filter, a verifier) are left out. Before the turns
come the system message, a greeting (an assistant message) and the prompt (the first
user message), each from its source.

Tool calls: an assistant turn whose ``meta.tool_calls`` lists calls (``id``,
``name``, ``arguments``, as ``ctx.say(text, tool_calls=...)`` records them) becomes
an OpenAI assistant message with ``tool_calls``; a tool turn's ``meta.tool_call_id``
names the call it answers. Consecutive user messages are joined (a blank line
between): chat templates want user and assistant to alternate.

An example ends with the assistant's last answer (an assistant message without
tool calls): what came after it (a judge's turn, calls a step limit cut short)
is left out. A row that gives no example raises ``Skip`` with a reason short
enough to count rows by.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Message = dict[str, Any]
Row = Mapping[str, Any]
Text = Callable[[Row], str]  # a text of the row, or Skip


class Skip(Exception):
    """The row gives no example; ``reason`` says why (no ids: rows are counted by it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class View:
    """A workflow's export view with its texts resolved (``resolve.view_of``)."""

    assistant: str | None = None
    user: frozenset[str] = frozenset()
    tool_role: str = "tool"
    system: Text | None = None
    greeting: Text | None = None
    prompt: Text | None = None
    response: Text | None = None  # single turn: the answer, instead of the assistant's turns
    tools: tuple[dict[str, Any], ...] = ()

    @property
    def answerer(self) -> str:
        """Who answers, for messages: the assistant role, or the response's source."""
        return self.assistant or "response"


def conversation(row: Row, view: View) -> list[Message]:
    """The row's conversation from the assistant's side. Raises ``Skip``."""
    msgs: list[Message] = []
    if view.system is not None:
        msgs.append({"role": "system", "content": view.system(row)})
    if view.greeting is not None:
        msgs.append({"role": "assistant", "content": view.greeting(row)})
    if view.prompt is not None:
        msgs.append({"role": "user", "content": view.prompt(row)})
    if view.response is not None:
        msgs.append({"role": "assistant", "content": view.response(row)})
        return msgs
    fixed = len(msgs)  # the view's own messages: the answer comes after them
    dialogue = row.get("dialogue")
    for turn in dialogue if isinstance(dialogue, list) else ():
        if not isinstance(turn, Mapping):
            raise Skip("a dialogue turn is not an object")
        role = turn.get("role")
        content = turn.get("content")
        content = content if isinstance(content, str) else ""
        meta = turn.get("meta")
        meta = meta if isinstance(meta, Mapping) else {}
        if role == view.assistant:
            msgs.append(_assistant(content, meta.get("tool_calls")))
        elif role in view.user:
            if msgs and msgs[-1]["role"] == "user":
                msgs[-1] = {"role": "user", "content": f"{msgs[-1]['content']}\n\n{content}"}
            else:
                msgs.append({"role": "user", "content": content})
        elif role == view.tool_role:
            msgs.append({"role": "tool", "tool_call_id": str(meta.get("tool_call_id") or ""),
                         "content": content})
    return complete(msgs, view.answerer, fixed)


def _assistant(content: str, calls: Any) -> Message:
    if not calls:
        return {"role": "assistant", "content": content}
    if not isinstance(calls, Sequence) or isinstance(calls, str):
        raise Skip("an assistant turn's meta.tool_calls is not a list")
    out = []
    for c in calls:
        if not isinstance(c, Mapping) or not c.get("id") or not c.get("name"):
            raise Skip("a tool call without an id or a name")
        args = c.get("arguments")
        out.append({"id": str(c["id"]), "type": "function",
                    "function": {"name": str(c["name"]),
                                 "arguments": args if isinstance(args, str) else ""}})
    return {"role": "assistant", "content": content or None, "tool_calls": out}


def complete(msgs: list[Message], answerer: str, fixed: int = 0) -> list[Message]:
    """``msgs`` up to the last assistant answer after the first ``fixed`` (the view's
    own: a greeting is no answer), every tool call in it answered by one tool message
    before the conversation goes on. Raises ``Skip``."""
    last = max((i for i, m in enumerate(msgs) if i >= fixed
                and m["role"] == "assistant" and not m.get("tool_calls")), default=-1)
    if last < 0:
        raise Skip(f"no answer by {answerer}")
    kept = msgs[:last + 1]
    open_calls: set[str] = set()
    for m in kept:
        if m["role"] == "tool":
            if m["tool_call_id"] not in open_calls:
                raise Skip("a tool result answers no open tool call")
            open_calls.discard(m["tool_call_id"])
            continue
        if open_calls:
            raise Skip("a tool call has no result")
        if m.get("tool_calls"):
            ids = [c["id"] for c in m["tool_calls"]]
            if len(set(ids)) != len(ids):
                raise Skip("two tool calls of one turn share an id")
            open_calls = set(ids)
    return kept
