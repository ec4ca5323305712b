"""The simulator's answer to a request with ``response_format``: JSON that follows the
schema, as vLLM's guided decoding would give. Pure: a function of the schema and an RNG.

Covers what agents ask for: objects (every property, required or not), strings
(filler words within ``minLength``/``maxLength``), numbers and integers (within
``minimum``/``maximum``), booleans, null, ``enum``/``const``, arrays (1-3 items, within
``minItems``/``maxItems``), ``anyOf``/``oneOf`` (the first option that is not null),
nested schemas and ``$ref`` into ``$defs`` (msgspec's ``json.schema`` writes those).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

import msgspec

from matrix_p2p.sim.responder import filler

_encoder = msgspec.json.Encoder()
_MAX_DEPTH = 8  # a recursive schema ends in empty arrays and nulls


class SchemaError(ValueError):
    """A response_format the simulator cannot follow (answered with 400)."""


def parse_response_format(value: Any) -> dict[str, Any] | None:
    """The JSON schema a request's ``response_format`` asks for, or None for plain text.
    ``json_object`` asks for any object. Raises ``SchemaError`` for a malformed one."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SchemaError("response_format must be an object")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        inner = value.get("json_schema")
        schema = inner.get("schema") if isinstance(inner, dict) else None
        if not isinstance(schema, dict):
            raise SchemaError("response_format.json_schema.schema must be an object")
        return schema
    raise SchemaError("response_format.type must be 'text', 'json_object' or 'json_schema'")


def answer_json(schema: Mapping[str, Any], rng: random.Random) -> str:
    """A JSON text that follows ``schema``; the same for the same RNG state."""
    return _encoder.encode(generate(schema, rng)).decode()


def generate(schema: Mapping[str, Any], rng: random.Random,
             root: Mapping[str, Any] | None = None, depth: int = 0) -> Any:
    """A value that follows ``schema``."""
    root = schema if root is None else root
    ref = schema.get("$ref")
    if isinstance(ref, str):
        schema = _resolve(ref, root)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return rng.choice(enum)
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            usable = [o for o in options if isinstance(o, dict) and o.get("type") != "null"]
            return generate((usable or options)[0], rng, root, depth)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        props = schema.get("properties") or {}
        if depth >= _MAX_DEPTH:
            props = {k: v for k, v in props.items() if k in (schema.get("required") or ())}
        return {name: generate(sub, rng, root, depth + 1) for name, sub in props.items()}
    if kind == "array":
        lo = int(schema.get("minItems", 0))
        hi = int(schema.get("maxItems", max(lo, 3)))
        n = lo if depth >= _MAX_DEPTH else rng.randint(min(max(lo, 1), hi), max(lo, min(hi, 3)))
        items = schema.get("items")
        sub = items if isinstance(items, dict) else {"type": "string"}
        return [generate(sub, rng, root, depth + 1) for _ in range(n)]
    if kind == "string":
        return _string(schema, rng)
    if kind == "integer":
        lo_i, hi_i = _bounds(schema, 0, 100)
        return rng.randint(math.ceil(lo_i), max(math.ceil(lo_i), math.floor(hi_i)))
    if kind == "number":
        lo_f, hi_f = _bounds(schema, 0.0, 1.0)
        return round(rng.uniform(lo_f, hi_f), 4)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    raise SchemaError(f"response_format: unknown type {kind!r}")


def _string(schema: Mapping[str, Any], rng: random.Random) -> str:
    lo = int(schema.get("minLength", 0))
    hi = schema.get("maxLength")
    text = filler(rng.randint(2, 6), rng)
    while len(text) < lo:
        text += " " + filler(4, rng)
    return text[:int(hi)] if isinstance(hi, int) else text


def _bounds(schema: Mapping[str, Any], lo: float, hi: float) -> tuple[float, float]:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    lo = float(low) if isinstance(low, (int, float)) else lo
    hi = float(high) if isinstance(high, (int, float)) else max(hi, lo + (hi - 0))
    if "exclusiveMinimum" in schema and "minimum" not in schema:
        lo += 1 if schema.get("type") == "integer" else 1e-3
    if "exclusiveMaximum" in schema and "maximum" not in schema:
        hi -= 1 if schema.get("type") == "integer" else 1e-3
    return lo, max(lo, hi)


def _resolve(ref: str, root: Mapping[str, Any]) -> Mapping[str, Any]:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node.get(part) if isinstance(node, Mapping) else None
    if not isinstance(node, Mapping):
        raise SchemaError(f"response_format: $ref {ref!r} names nothing")
    return node
