"""The OpenAI-compatible wire format, and the small text formats around it. Pure.

Requests are plain dicts encoded once; responses decode into typed structs
that ignore unknown fields (servers add fields freely). New request or
response fields (tools, tool calls) belong here and in ``types.LLMResponse``
only: the client never looks inside a body.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec

from matrix_p2p.llm.pool import normalise_url
from matrix_p2p.llm.tools import WireToolCall, from_wire
from matrix_p2p.llm.types import LLMResponse

CallKind = Literal["chat", "complete"]
PATHS: dict[CallKind, str] = {"chat": "/v1/chat/completions", "complete": "/v1/completions"}
MODELS_PATH = "/v1/models"
METRICS_PATH = "/metrics"
MAX_RETRY_AFTER_S = 600.0


class BadResponse(ValueError):
    """The server answered 200 with a body we cannot use; the message says why."""


# -- requests -----------------------------------------------------------------
_encoder = msgspec.json.Encoder()


def chat_body(
    messages: Sequence[Mapping[str, Any]],
    max_tokens: int | None,
    temperature: float | None,
    extra_body: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON of a ``/v1/chat/completions`` request, without ``model``."""
    return _with_sampling({"messages": list(messages), **extra_body}, max_tokens, temperature)


def completion_body(
    prompt: str, max_tokens: int | None, temperature: float | None, extra_body: Mapping[str, Any]
) -> dict[str, Any]:
    """The JSON of a ``/v1/completions`` request, without ``model``."""
    return _with_sampling({"prompt": prompt, **extra_body}, max_tokens, temperature)


def _with_sampling(
    body: dict[str, Any], max_tokens: int | None, temperature: float | None
) -> dict[str, Any]:
    # None means "the server's default": leave the field out rather than send null.
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature
    return body


def encode(body: Mapping[str, Any]) -> bytes:
    return _encoder.encode(body)


# -- responses (unknown fields ignored) ---------------------------------------
class _Message(msgspec.Struct):
    content: str | None = None
    tool_calls: list[WireToolCall] | None = None


class _Choice(msgspec.Struct):
    message: _Message | None = None
    text: str | None = None
    finish_reason: str | None = None


class _WireUsage(msgspec.Struct):
    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0


class _Completion(msgspec.Struct):
    choices: list[_Choice]
    usage: _WireUsage | None = None
    model: str = ""


class _Model(msgspec.Struct):
    id: str


class _Models(msgspec.Struct):
    data: list[_Model]


_completion_decoder = msgspec.json.Decoder(_Completion)
_models_decoder = msgspec.json.Decoder(_Models)


def decode_completion(
    raw: bytes, *, endpoint: str, model: str, latency_s: float, attempts: int
) -> LLMResponse:
    """The first choice of a chat or text completion. ``model`` is the one we asked
    for, used when the server does not name it. Raises ``BadResponse``."""
    try:
        c = _completion_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise BadResponse(f"undecodable body: {e}") from e
    if not c.choices:
        raise BadResponse("response has no choices")
    ch = c.choices[0]
    text = ch.message.content if ch.message is not None else ch.text
    usage = c.usage or _WireUsage()
    return LLMResponse(
        text=text or "",
        prompt_tokens=usage.prompt_tokens or 0,
        completion_tokens=usage.completion_tokens or 0,
        endpoint=endpoint,
        model=c.model or model,
        latency_s=latency_s,
        finish_reason=ch.finish_reason,
        attempts=attempts,
        tool_calls=from_wire(ch.message.tool_calls) if ch.message is not None else (),
    )


def decode_models(raw: bytes) -> list[str]:
    """The ids of the models in a ``/v1/models`` answer, in the server's order (maybe
    none). Raises ``BadResponse``."""
    try:
        models = _models_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise BadResponse(f"GET {MODELS_PATH}: {e}") from e
    return [m.id for m in models.data]


def decode_first_model(raw: bytes) -> str:
    """The id of the first model in a ``/v1/models`` answer. Raises ``BadResponse``."""
    models = decode_models(raw)
    if not models:
        raise BadResponse(f"GET {MODELS_PATH}: no models")
    return models[0]


# -- headers and side formats --------------------------------------------------
def parse_retry_after(value: str | None, wall_now: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    try:
        secs = float(value)
    except ValueError:
        try:
            secs = email.utils.parsedate_to_datetime(value).timestamp() - wall_now
        except (TypeError, ValueError, IndexError):
            return None
    return min(MAX_RETRY_AFTER_S, max(0.0, secs))


def parse_endpoints_file(text: str) -> list[str]:
    """One URL per line; ``#`` starts a comment; blank lines ignored."""
    out: list[str] = []
    for line in text.splitlines():
        url = line.split("#", 1)[0].strip()
        if url:
            out.append(normalise_url(url))
    return out


def parse_waiting(metrics_text: str) -> int | None:
    """Sum of ``vllm:num_requests_waiting`` samples, or None when absent."""
    total: float | None = None
    for line in metrics_text.splitlines():
        if line.startswith("vllm:num_requests_waiting"):
            try:
                total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
    return None if total is None else int(total)
