"""Structured outputs: ask for a JSON schema, validate the answer, decide to re-ask. Pure.

``ctx.chat(messages, response_format=Schema)`` (``agent.Context``) sends the OpenAI/vLLM
``response_format`` (``{"type": "json_schema", "json_schema": {"name", "schema"}}``;
vLLM turns it into guided decoding), then checks the answer here: a msgspec ``Struct``
type is decoded and validated by msgspec (the value handed back is an instance), a
JSON schema dict by ``check`` below (a small validator for the subset that agents use:
types, ``enum``/``const``, ``required``, ``properties``, ``items``, bounds, ``anyOf``,
``$ref`` into ``$defs``; the value handed back is plain JSON). An invalid answer is
re-asked with the validation error appended, at most ``max_reasks`` times
(``should_reask``); then the call ends as ``LLMError(kind="invalid_output")``, which
``unwrap()`` turns into a task failure naming the error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

DEFAULT_MAX_REASKS = 2

_json = msgspec.json.Decoder()
_NAME_RE = re.compile(r"[^A-Za-z0-9_-]")


class Invalid(ValueError):
    """The answer does not follow the schema; the message says where and why."""


class Structured:
    """One requested format: what goes on the wire, and how an answer is checked."""

    __slots__ = ("_decoder", "name", "schema", "target")

    def __init__(self, target: type[msgspec.Struct] | Mapping[str, Any],
                 name: str | None = None) -> None:
        self.target = target
        if isinstance(target, type) and issubclass(target, msgspec.Struct):
            self.schema: dict[str, Any] = msgspec.json.schema(target)
            self._decoder: msgspec.json.Decoder[Any] | None = msgspec.json.Decoder(target)
            default_name = target.__name__
        elif isinstance(target, Mapping):
            self.schema = dict(target)
            self._decoder = None
            default_name = str(target.get("title") or "answer")
        else:
            raise TypeError("response_format must be a msgspec.Struct type or a JSON schema "
                            f"dict, not {type(target).__name__}")
        # OpenAI allows [A-Za-z0-9_-]{1,64} in the name
        self.name = _NAME_RE.sub("_", name or default_name)[:64] or "answer"

    def wire(self) -> dict[str, Any]:
        """The request's ``response_format``."""
        return {"type": "json_schema",
                "json_schema": {"name": self.name, "schema": self.schema}}

    def parse(self, text: str) -> Any:
        """The answer as a value of the format; ``Invalid`` when it is not one."""
        if self._decoder is not None:
            try:
                return self._decoder.decode(text)
            except msgspec.ValidationError as exc:
                raise Invalid(str(exc)) from None
            except msgspec.DecodeError as exc:
                raise Invalid(f"not valid JSON: {exc}") from None
        try:
            value = _json.decode(text)
        except msgspec.DecodeError as exc:
            raise Invalid(f"not valid JSON: {exc}") from None
        check(value, self.schema)
        return value


def should_reask(reasks_done: int, max_reasks: int) -> bool:
    """Whether an invalid answer is asked again (else the call fails): ``max_reasks``
    re-asks after the first answer, so at most ``max_reasks + 1`` answers in all."""
    return reasks_done < max_reasks


def reask_messages(messages: Sequence[Mapping[str, Any]], answer: str,
                   error: str) -> list[dict[str, Any]]:
    """The conversation to send again: the invalid answer, then the validation error."""
    return [*(dict(m) for m in messages),
            {"role": "assistant", "content": answer},
            {"role": "user", "content": f"That answer is not valid: {error}. Answer again "
                                        "with only JSON that follows the schema."}]


# -- a small JSON schema validator --------------------------------------------------
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "integer": (int,), "number": (int, float), "null": (type(None),),
}


def check(value: Any, schema: Mapping[str, Any], root: Mapping[str, Any] | None = None,
          path: str = "$") -> None:
    """Raise ``Invalid`` naming the path when ``value`` does not follow ``schema``.
    Keywords outside the subset (module docstring) are ignored, not enforced."""
    root = schema if root is None else root
    ref = schema.get("$ref")
    if isinstance(ref, str):
        schema = resolve(ref, root)
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            errors = []
            for option in options:
                try:
                    check(value, option, root, path)
                    break
                except Invalid as exc:
                    errors.append(str(exc))
            else:
                raise Invalid(f"matches none of {key}: {'; '.join(errors)}")
    if "const" in schema and value != schema["const"]:
        raise Invalid(f"expected {schema['const']!r} - at `{path}`")
    enum = schema.get("enum")
    if isinstance(enum, list) and value not in enum:
        raise Invalid(f"expected one of {enum!r}, got {value!r} - at `{path}`")
    kind = schema.get("type")
    kinds = [kind] if isinstance(kind, str) else kind if isinstance(kind, list) else []
    if kinds and not any(_is(value, k) for k in kinds):
        raise Invalid(f"expected `{'|'.join(kinds)}`, got `{_type_name(value)}` - at `{path}`")
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for name in schema.get("required") or ():
            if name not in value:
                raise Invalid(f"object missing required field `{name}` - at `{path}`")
        for name, sub in props.items():
            if name in value:
                check(value[name], sub, root, f"{path}.{name}")
    elif isinstance(value, list):
        lo, hi = schema.get("minItems"), schema.get("maxItems")
        if isinstance(lo, int) and len(value) < lo:
            raise Invalid(f"expected at least {lo} items - at `{path}`")
        if isinstance(hi, int) and len(value) > hi:
            raise Invalid(f"expected at most {hi} items - at `{path}`")
        items = schema.get("items")
        if isinstance(items, Mapping):
            for i, item in enumerate(value):
                check(item, items, root, f"{path}[{i}]")
    elif isinstance(value, str):
        lo, hi = schema.get("minLength"), schema.get("maxLength")
        if isinstance(lo, int) and len(value) < lo:
            raise Invalid(f"expected a string of at least {lo} characters - at `{path}`")
        if isinstance(hi, int) and len(value) > hi:
            raise Invalid(f"expected a string of at most {hi} characters - at `{path}`")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if isinstance(lo, (int, float)) and value < lo:
            raise Invalid(f"expected >= {lo} - at `{path}`")
        if isinstance(hi, (int, float)) and value > hi:
            raise Invalid(f"expected <= {hi} - at `{path}`")


def resolve(ref: str, root: Mapping[str, Any]) -> Mapping[str, Any]:
    """A local ``$ref`` (``#/$defs/Name``, as msgspec writes them)."""
    if not ref.startswith("#/"):
        raise Invalid(f"schema: only local $ref is supported, got {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node.get(part) if isinstance(node, Mapping) else None
    if not isinstance(node, Mapping):
        raise Invalid(f"schema: $ref {ref!r} names nothing")
    return node


def _is(value: Any, kind: str) -> bool:
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(kind, (object,)))


def _type_name(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _is(value, name):
            return name
    return type(value).__name__
