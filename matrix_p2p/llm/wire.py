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


def metric_samples(metrics_text: str, name: str) -> list[float]:
    """The values of the samples of exactly the metric ``name`` in a Prometheus text
    exposition: ``vllm:num_requests_waiting`` does not match vLLM 0.10+'s
    ``vllm:num_requests_waiting_by_reason``, which splits the same queue by reason."""
    out: list[float] = []
    for line in metrics_text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name):]
        if not rest or rest[0] not in "{ ":
            continue  # another metric whose name starts with ``name``
        try:
            out.append(float(line.rsplit(" ", 1)[1]))
        except (IndexError, ValueError):
            continue
    return out


def parse_waiting(metrics_text: str) -> int | None:
    """Sum of ``vllm:num_requests_waiting`` samples (one per engine), or None when absent."""
    values = metric_samples(metrics_text, "vllm:num_requests_waiting")
    return int(sum(values)) if values else None


#: KV-cache usage (0..1): vLLM 0.9 renamed ``gpu_cache_usage_perc``; older servers
#: (and CPU builds before the rename, ``cpu_cache_usage_perc``) expose the old names.
KV_CACHE_USAGE_NAMES = (
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "vllm:cpu_cache_usage_perc",
)


def parse_kv_cache_usage(metrics_text: str) -> float | None:
    """The highest KV-cache usage (0..1) over the server's engines, from the newest
    name the server exposes; None when it exposes none."""
    for name in KV_CACHE_USAGE_NAMES:
        values = metric_samples(metrics_text, name)
        if values:
            return max(values)
    return None


def parse_running(metrics_text: str) -> int | None:
    """Sum of ``vllm:num_requests_running`` samples, or None when absent."""
    values = metric_samples(metrics_text, "vllm:num_requests_running")
    return int(sum(values)) if values else None


def error_reason(raw: bytes, limit: int = 500) -> str:
    """The server's own reason for an error answer, on one line: ``error.message``
    (vLLM 0.6+, OpenAI) or a top-level ``message`` (older vLLM), else the body's start."""
    reason: object = None
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        reason = err.get("message") if isinstance(err, dict) else None
        if not isinstance(reason, str):
            reason = err if isinstance(err, str) else body.get("message")
    if not isinstance(reason, str) or not reason.strip():
        reason = raw[:limit].decode("utf-8", "replace")
    one_line = " ".join(reason.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 3] + "..."
