"""Tool calls on the wire and in the conversation. Pure: no I/O.

An agent offers tools with ``ctx.chat(messages, tools=schemas, tool_choice="auto")``
(``tools`` and ``tool_choice`` go into the request body as they are) and reads
``LLMResponse.tool_calls``: a tuple of ``ToolCall`` (``types``), empty for a
text answer. The model's arguments are kept as the raw string it wrote, since
models (and the simulator, on purpose) write malformed JSON;
``ToolCall.parse_arguments()`` decodes them or raises ``ToolCallError`` with a
message meant for the model. To continue the conversation, append
``response.message()`` and one ``tool_message(call, result)`` per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from matrix_p2p.llm.types import ToolCall


# -- the wire (unknown fields ignored; a call missing a part decodes with defaults,
# so a sloppy server gives the agent a bad call to report, not a failed request)
class WireFunction(msgspec.Struct):
    name: str = ""
    arguments: str = ""


class WireToolCall(msgspec.Struct):
    id: str = ""
    function: WireFunction | None = None


def from_wire(calls: Sequence[WireToolCall] | None) -> tuple[ToolCall, ...]:
    """Our ``ToolCall``s from a response message's ``tool_calls``."""
    return tuple(
        ToolCall(id=c.id, name=c.function.name if c.function else "",
                 arguments=c.function.arguments if c.function else "")
        for c in calls or ()
    )


def tool_message(call: ToolCall, content: str) -> dict[str, Any]:
    """The result of ``call``, as the ``tool`` message that answers it."""
    return {"role": "tool", "tool_call_id": call.id, "content": content}
