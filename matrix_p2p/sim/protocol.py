"""OpenAI/vLLM request parsing and response shapes. Pure: dicts in, dicts out."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any, Literal

import msgspec

from matrix_p2p.sim.schema_json import SchemaError, parse_response_format

Kind = Literal["chat", "completion"]

_decoder = msgspec.json.Decoder()
_WORD_RE = re.compile(r"\s*\S+")

#: Extra prompt tokens per chat message, for the chat template.
CHAT_TEMPLATE_TOKENS = 4


class BadRequest(Exception):
    """The body is not a valid request; answered with 400 and this message."""


class SimRequest(msgspec.Struct, kw_only=True, frozen=True):
    kind: Kind
    model: str
    text: str  # what the responder reads: the prompt, or message contents joined by newlines
    payload: Any  # the messages list or the prompt, hashed for the request's RNG
    n_messages: int
    max_tokens: int | None
    stream: bool
    include_usage: bool
    seed: int | None
    # Tool calling (see tools.py): the offered tools, and "none", "auto",
    # "required" or the name of the one function the model must call.
    tools: list[dict[str, Any]] | None = None
    tool_choice: str = "none"
    # the JSON schema of a structured-output request (``schema_json``), None for text
    response_format: dict[str, Any] | None = None


def _content_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    raise BadRequest(f"{where}: content must be a string or a list of parts")


def _int_field(body: dict[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise BadRequest(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _parse_tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str]:
    """``tools`` and ``tool_choice``, checked as vLLM does; the choice defaults to
    "auto" with tools and "none" without, as OpenAI's does."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is not None:
        if not isinstance(tools, list):
            raise BadRequest("tools must be a list")
        for i, tool in enumerate(tools):
            fn = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
                raise BadRequest(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}")
            if not isinstance(fn.get("name"), str) or not fn["name"]:
                raise BadRequest(f"tools[{i}].function.name must be a non-empty string")
            if not isinstance(fn.get("parameters", {}), dict):
                raise BadRequest(f"tools[{i}].function.parameters must be an object")
        tools = tools or None
    if choice is None:
        return tools, "auto" if tools else "none"
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise BadRequest("tool_choice must be 'none', 'auto', 'required' or a named function")
        if not any(t["function"]["name"] == name for t in tools or []):
            raise BadRequest(f"tool_choice names a function that is not in tools: {name!r}")
        return tools, name
    if choice not in ("none", "auto", "required"):
        raise BadRequest("tool_choice must be 'none', 'auto', 'required' or a named function")
    if choice != "none" and not tools:
        raise BadRequest(f"tool_choice {choice!r} requires tools")
    return tools, choice


def parse_request(raw: bytes, kind: Kind, default_model: str) -> SimRequest:
    """Parse a chat or text completion body; raises ``BadRequest`` naming the bad field."""
    try:
        body = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list")
        parts: list[str] = []
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict):
                raise BadRequest(f"messages[{i}] must be an object")
            parts.append(_content_text(msg.get("content"), f"messages[{i}]"))
        text, n_messages = "\n".join(parts), len(messages)
        payload: Any = messages
        tools, tool_choice = _parse_tools(body)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt) and prompt:
            prompt = "\n".join(prompt)
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be a string or a list of strings")
        text, payload, n_messages = prompt, prompt, 0
        tools, tool_choice = None, "none"
    try:
        response_format = parse_response_format(body.get("response_format"))
    except SchemaError as exc:
        raise BadRequest(str(exc)) from None
    model = body.get("model") or default_model
    if not isinstance(model, str):
        raise BadRequest("model must be a string")
    stream = body.get("stream") or False
    options = body.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(options, dict):
        raise BadRequest("stream must be a boolean and stream_options an object")
    return SimRequest(
        kind=kind,
        model=model,
        text=text,
        payload=payload,
        n_messages=n_messages,
        max_tokens=_int_field(body, "max_tokens", 1)
        or _int_field(body, "max_completion_tokens", 1),
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        seed=_int_field(body, "seed", -(2**63)),
        tools=tools,
        tool_choice=tool_choice,
        response_format=response_format,
    )


def split_tokens(text: str) -> list[str]:
    """The text as simulator tokens: each word with its leading whitespace."""
    return _WORD_RE.findall(text)


def new_id(kind: Kind) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    req: SimRequest,
    rid: str,
    text: str,
    finish_reason: str,
    use: dict[str, int],
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0}
    if req.kind == "chat":
        # a tool call comes with no text: content null, as OpenAI and vLLM answer
        content = None if tool_calls and not text else text
        choice["message"] = {"role": "assistant", "content": content, "tool_calls": tool_calls or []}
    else:
        choice["text"] = text
    choice |= {"logprobs": None, "finish_reason": finish_reason, "stop_reason": None}
    return {
        "id": rid,
        "object": "chat.completion" if req.kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": req.model,
        "choices": [choice],
        "usage": use,
    }


def chunk_body(
    req: SimRequest,
    rid: str,
    created: int,
    *,
    text: str | None = None,
    role: bool = False,
    finish_reason: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One streamed chunk: a role announcement, a text delta, tool calls or the finish."""
    choice: dict[str, Any] = {"index": 0}
    if req.kind == "chat":
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
            delta["content"] = ""
        if text is not None:
            delta["content"] = text
        if tool_calls:  # each call whole, in one delta (OpenAI streams may split them)
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(tool_calls)]
        choice["delta"] = delta
    else:
        choice["text"] = text or ""
    choice |= {"logprobs": None, "finish_reason": finish_reason}
    return {
        "id": rid,
        "object": "chat.completion.chunk" if req.kind == "chat" else "text_completion",
        "created": created,
        "model": req.model,
        "choices": [choice],
    }


def usage_chunk(req: SimRequest, rid: str, created: int, use: dict[str, int]) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk" if req.kind == "chat" else "text_completion",
        "created": created,
        "model": req.model,
        "choices": [],
        "usage": use,
    }


def error_body(message: str, kind: str, code: int, param: str | None = None) -> dict[str, Any]:
    """vLLM's error shape (``param``: the request field at fault, when known)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def models_body(model: str, created: int, max_model_len: int | None = None) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": model,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": model,
                "parent": None,
                "max_model_len": max_model_len,
                "permission": [],
            }
        ],
    }
