"""Typed results of LLM calls. Pure: no I/O.

An agent gets either an ``LLMResponse`` or an ``LLMError`` back from every
call, never an exception from the transport. ``unwrap()`` turns an error into
the routing decision the runtime understands (retry the hop later, or fail the
task), so the simplest agent is ``text = (await ctx.chat(msgs)).unwrap().text``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from matrix_p2p.errors import FailTask, RetryLater

ErrorKind = Literal[
    "rate_limited",  # 429 from every endpoint tried
    "unavailable",  # 5xx, connection refused/dropped, circuit open
    "timeout",  # the request exceeded its deadline
    "bad_request",  # 4xx other than 429: retrying will not help
    "bad_response",  # the server answered something we cannot parse
    "no_endpoints",  # the pool is empty or every endpoint is ejected
    # the answer did not follow the requested response_format, re-asked up to the limit
    # (``structured``): the task fails, naming the validation error
    "invalid_output",
]

# bad_response is transient: one replica answering garbage is that replica's fault, so the
# hop is retried (elsewhere) up to limits.max_deliveries before the task fails
TRANSIENT: frozenset[str] = frozenset(
    {"rate_limited", "unavailable", "timeout", "no_endpoints", "bad_response"}
)


class ToolCallError(ValueError):
    """A tool call's arguments are not a JSON object; the message is meant for the model."""


class ToolCall(msgspec.Struct, kw_only=True, frozen=True):
    """One function call the model asked for (see ``tools.py``)."""

    id: str
    name: str
    arguments: str  # the JSON text as the model wrote it: may be malformed

    def parse_arguments(self) -> dict[str, Any]:
        """The arguments as a dict, or ``ToolCallError``."""
        try:
            value = msgspec.json.decode(self.arguments or "{}")
        except msgspec.DecodeError as exc:
            raise ToolCallError(f"arguments of {self.name!r} are not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ToolCallError(f"arguments of {self.name!r} must be a JSON object")
        return value


class LLMResponse(msgspec.Struct, kw_only=True, frozen=True):
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    endpoint: str = ""
    model: str = ""
    latency_s: float = 0.0
    finish_reason: str | None = None  # "stop", "length", "tool_calls"
    attempts: int = 1
    tool_calls: tuple[ToolCall, ...] = ()  # empty for a text answer
    # with ``ctx.chat(..., response_format=S)``: the validated answer (an ``S`` for a
    # msgspec Struct, plain JSON for a schema dict); None otherwise
    parsed: Any = None
    # answered from the response cache (``cache``): no tokens generated for it
    cached: bool = False

    @property
    def ok(self) -> bool:
        return True

    def unwrap(self) -> LLMResponse:
        return self

    def message(self) -> dict[str, Any]:
        """This answer as the assistant message to append to the conversation (OpenAI format)."""
        if not self.tool_calls:
            return {"role": "assistant", "content": self.text}
        calls = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in self.tool_calls
        ]
        return {"role": "assistant", "content": self.text or None, "tool_calls": calls}


class LLMError(msgspec.Struct, kw_only=True, frozen=True):
    kind: ErrorKind
    message: str
    endpoint: str = ""
    status: int | None = None
    retry_after_s: float | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return False

    @property
    def transient(self) -> bool:
        return self.kind in TRANSIENT

    def unwrap(self) -> LLMResponse:
        """Raise the routing decision for this error: retry the hop, or fail the task."""
        where = f" at {self.endpoint}" if self.endpoint else ""
        reason = f"LLM {self.kind}{where}: {self.message}"
        if self.transient:
            raise RetryLater(reason, after_s=self.retry_after_s or 2.0)
        raise FailTask(reason)


LLMResult = LLMResponse | LLMError
