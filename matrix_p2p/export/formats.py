"""What trainers read, from conversations (``views``). Pure.

- ``messages``: ``{"messages": [...], "tools": [...]}``, OpenAI's chat fine-tuning
  format (TRL's SFTTrainer reads it too): ``system``/``user``/``assistant`` messages,
  an assistant's ``tool_calls`` and ``role: tool`` results with ``tool_call_id``.
- ``sharegpt``: ``{"conversations": [{"from": ..., "value": ...}], "tools": "<json>"}``
  with ``system``, ``human``, ``gpt``, ``function_call`` (a JSON list of
  ``{"name", "arguments"}``) and ``observation`` (a tool's result), as
  LLaMA-Factory and axolotl read it. The text an assistant wrote beside its tool calls
  is not kept (the format has no place for it).
- ``preference``: ``{"prompt": [...], "chosen": [...], "rejected": [...]}`` in
  messages, TRL's conversational preference format: the prompt is what both
  conversations share, up to the first assistant message where they part.

Each example carries the ``id`` of its row (``chosen_id``/``rejected_id`` and their
scores for a pair) unless ``ids=False``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from matrix_p2p.export.views import Message, Skip

FORMATS = ("messages", "sharegpt", "preference")
_SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}


def messages_example(row_id: str, msgs: list[Message], tools: Sequence[dict[str, Any]], *,
                     ids: bool = True) -> dict[str, Any]:
    return {**({"id": row_id} if ids else {}), "messages": msgs,
            **({"tools": list(tools)} if tools else {})}


def sharegpt_example(row_id: str, msgs: list[Message], tools: Sequence[dict[str, Any]], *,
                     ids: bool = True) -> dict[str, Any]:
    conv: list[dict[str, str]] = []
    for m in msgs:
        if m.get("tool_calls"):
            calls = [{"name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])}
                     for c in m["tool_calls"]]
            conv.append({"from": "function_call", "value": json.dumps(calls, ensure_ascii=False)})
        else:
            conv.append({"from": _SHAREGPT_FROM[m["role"]], "value": m["content"] or ""})
    return {**({"id": row_id} if ids else {}), "conversations": conv,
            **({"tools": json.dumps(list(tools), ensure_ascii=False)} if tools else {})}


def _arguments(raw: str) -> Any:
    """A call's arguments as JSON when they parse (models write malformed ones: then the
    string as written)."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def shared_prompt(a: list[Message], b: list[Message]) -> int:
    """How many leading messages the two conversations share as their prompt: up to the
    first message where they differ, then back to just before an assistant message, so
    that chosen and rejected each start with the assistant. Raises ``Skip`` when the
    prompt would hold no user message or the conversations do not differ."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    if n == len(a) and n == len(b):
        raise Skip("the trials' conversations are the same")
    while n > 0 and not (n < len(a) and n < len(b) and a[n]["role"] == "assistant"
                         and b[n]["role"] == "assistant"):
        n -= 1
    if not any(m["role"] == "user" for m in a[:n]):
        raise Skip("the trials share no prompt")
    return n


def preference_example(chosen_id: str, chosen: list[Message], chosen_score: float,
                       rejected_id: str, rejected: list[Message], rejected_score: float,
                       tools: Sequence[dict[str, Any]], *, ids: bool = True) -> dict[str, Any]:
    n = shared_prompt(chosen, rejected)
    meta = {"chosen_id": chosen_id, "rejected_id": rejected_id, "chosen_score": chosen_score,
            "rejected_score": rejected_score} if ids else {}
    return {**meta, "prompt": chosen[:n], "chosen": chosen[n:], "rejected": rejected[n:],
            **({"tools": list(tools)} if tools else {})}
