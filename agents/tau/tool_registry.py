"""A registry of tools: parameters from signatures, OpenAI schemas, validated calls. Stdlib only.

A tool is a function ``(db, **arguments) -> str`` registered with ``@tool``. The
registry is the one source of truth: ``openai_schemas()`` is generated from the
functions' signatures (names, types, ``Literal`` enums) and the descriptions
given to ``@tool``; ``call_tool`` validates arguments against the same
parameters before running a tool, and turns a ``ToolError`` into the string
``Error: <message>`` (what the assistant sees as the tool's result).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin, get_type_hints


class ToolError(Exception):
    """A refused call; ``call_tool`` turns it into ``Error: <message>``."""


@dataclass(frozen=True)
class Param:
    name: str
    schema: dict[str, Any]  # JSON schema of the value
    description: str


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    params: tuple[Param, ...]
    func: Callable[..., str]
    writes: bool  # whether it may change the database


TOOLS: dict[str, Tool] = {}


def _json_schema(annotation: Any) -> dict[str, Any]:
    if annotation is str:
        return {"type": "string"}
    if get_origin(annotation) is Literal:
        return {"type": "string", "enum": list(get_args(annotation))}
    if get_origin(annotation) is list and get_args(annotation) == (str,):
        return {"type": "array", "items": {"type": "string"}}
    raise TypeError(f"no JSON schema for {annotation!r}")


def tool(
    description: str, *, writes: bool = False, **docs: str
) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Register a tool; ``docs`` describes each parameter (every one is required)."""

    def register(func: Callable[..., str]) -> Callable[..., str]:
        hints = get_type_hints(func)
        names = list(inspect.signature(func).parameters)[1:]  # after ``db``
        if sorted(names) != sorted(docs):
            raise TypeError(f"{func.__name__}: document exactly the parameters {names}")
        params = tuple(Param(n, _json_schema(hints[n]), docs[n]) for n in names)
        TOOLS[func.__name__] = Tool(func.__name__, description, params, func, writes)
        return func

    return register


def openai_schemas() -> list[dict[str, Any]]:
    """Every tool in OpenAI's function-calling format (for the ``tools`` request field)."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": {
                    "type": "object",
                    "properties": {p.name: {**p.schema, "description": p.description} for p in t.params},
                    "required": [p.name for p in t.params],
                    "additionalProperties": False,
                },
            },
        }
        for t in TOOLS.values()
    ]


def _check_value(param: Param, value: Any) -> str | None:
    kind = param.schema["type"]
    if kind == "string":
        if not isinstance(value, str):
            return f"argument '{param.name}' must be a string"
        if "enum" in param.schema and value not in param.schema["enum"]:
            allowed = ", ".join(repr(v) for v in param.schema["enum"])
            return f"argument '{param.name}' must be one of {allowed}"
    elif kind == "array" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return f"argument '{param.name}' must be an array of strings"
    return None


def call_tool(db: Any, name: str, arguments: Any) -> str:
    """Validate ``arguments`` (a dict) for tool ``name`` and run it on ``db`` (mutated in place)."""
    spec = TOOLS.get(name)
    if spec is None:
        return f"Error: unknown tool {name!r}"
    if not isinstance(arguments, dict):
        return "Error: arguments must be a JSON object"
    known = {p.name for p in spec.params}
    for key in arguments:
        if key not in known:
            return f"Error: unexpected argument {key!r}"
    for param in spec.params:
        if param.name not in arguments:
            return f"Error: missing argument {param.name!r}"
        problem = _check_value(param, arguments[param.name])
        if problem:
            return f"Error: {problem}"
    try:
        return spec.func(db, **arguments)
    except ToolError as exc:
        return f"Error: {exc}"
