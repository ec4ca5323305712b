"""Tool calling in the simulator. Pure: a function of the request and its RNG.

A chat request with ``tools`` (OpenAI function format) and a ``tool_choice``
other than ``"none"`` is answered by ``tool_answer`` (``"none"`` gets the
ordinary ``responder`` text). The protocol, fixed so that agents and tests can
rely on it:

1. **Whether to call.** ``"required"`` or a named function (``{"type":
   "function", "function": {"name": N}}``): always. ``"auto"``: with
   probability ``CALL_PROBABILITY[k]``, where ``k`` is the number of tool
   results since the last ``user`` message (0.85, 0.55, 0.3, then 0): a few
   calls per user turn, then a text answer.
2. **Which tool.** The named one; otherwise a weighted draw over the offered
   tools: weight 1, plus 4 times the fraction of its required parameters that
   can be filled from the conversation (plus 0.5 when it has none), times 0.2
   when that tool was already called.
3. **Arguments** (``arguments`` is a JSON object string, keys in schema
   order): every required parameter, grounded in the conversation (system
   messages excluded). A parameter with an ``enum`` takes a value mentioned in
   the conversation, else a random one. Otherwise its name picks a kind of
   value: ``*order_id`` (``#W1234567``), ``*email*``, ``*user_id``
   (``sara_doe_1234``), ``*payment_method_id`` (``credit_card_1234567``),
   ``zip`` (5 digits), ``first_name`` / ``last_name`` (after "I am", "I'm",
   "my name is", "this is"), other ``*_id`` / ``*_ids`` (8-12 digits). Values
   the user wrote come first (most recent first), then JSON fields of the same
   name in tool results (``"item_id": "..."``) and values of that kind in tool
   results; the first candidate is taken with probability 0.85, else a random
   one. Arrays take one value, sometimes two. With no candidate: a string
   gets the last user message's first words, numbers a small number.
4. **Malformed on purpose**, with probability ``tool_call_malformed_rate``
   (a fault field): ``bad_json`` (arguments cut in the middle),
   ``missing_argument`` (a required argument left out; ``bad_json`` when
   there is none) or ``unknown_tool`` (the name with ``_v2`` appended).
5. A call answers ``content: null``, one entry in ``tool_calls`` (id
   ``call_`` + 24 hex digits from the request's RNG) and ``finish_reason:
   "tool_calls"``; it costs one token per word of the arguments. When that
   exceeds ``max_tokens``, the arguments are cut there and ``finish_reason``
   is ``"length"``, as a real model's truncated call would be.
6. **Text answers** start with a grounded sentence: after a tool result, its
   scalar JSON fields (``status: delivered, order_id: #W...``) or its error;
   after a user message, the ids the user gave, asking for confirmation; then
   filler words up to the sampled length.

The RNG is the request's (``sampling.request_rng``), so the same messages,
tools and seed get the same answer, whatever the arrival order.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

import msgspec

from matrix_p2p.sim.responder import filler

CALL_PROBABILITY = (0.85, 0.55, 0.3)
FIRST_CANDIDATE_PROB = 0.85
MALFORMED_KINDS = ("bad_json", "missing_argument", "unknown_tool")

_KINDS: list[tuple[re.Pattern[str], re.Pattern[str]]] = [
    # (parameter name, value pattern): the first name that matches decides
    (re.compile(r"order_id"), re.compile(r"#[A-Z]{1,2}\d{4,}")),
    (re.compile(r"email"), re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
    (re.compile(r"user_id"), re.compile(r"\b[a-z]+_[a-z]+_\d{3,}\b")),
    (re.compile(r"payment_method_id"), re.compile(r"\b(?:credit_card|debit_card|paypal|gift_card)_\d+\b")),
    (re.compile(r"^zip"), re.compile(r"\b\d{5}\b")),
    (re.compile(r"_ids?$"), re.compile(r"\b\d{8,12}\b")),
]
_NAME_RE = re.compile(r"\b(?:I am|I'm|my name is|this is)\s+([A-Z][a-z]+)\s+([A-Z][a-z]+)", re.IGNORECASE)


class ToolAnswer(msgspec.Struct, frozen=True):
    text: str
    tool_calls: list[dict[str, Any]] | None
    completion_tokens: int
    finish_reason: str


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    fn: dict[str, Any] = tool["function"]
    return fn


def _params(tool: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    schema = _function(tool).get("parameters") or {}
    props = schema.get("properties") or {}
    required = [r for r in schema.get("required") or [] if r in props]
    return props, required


class _Conversation:
    """What the messages say, for grounding: user text, tool results, earlier calls."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.user: list[str] = []  # most recent first
        self.other: list[str] = []  # tool results and earlier call arguments, most recent first
        self.calls: set[tuple[str, str]] = set()
        self.since_user = 0  # tool results since the last user message
        self.last_role = ""
        self.last_text = ""
        for msg in messages:
            role, text = msg.get("role"), _text(msg.get("content"))
            if role == "user":
                self.user.insert(0, text)
                self.since_user = 0
            elif role == "tool":
                self.other.insert(0, text)
                self.since_user += 1
            elif role == "assistant":
                for call in msg.get("tool_calls") or []:
                    fn = (call.get("function") or {}) if isinstance(call, dict) else {}
                    name, args = str(fn.get("name", "")), str(fn.get("arguments", ""))
                    self.calls.add((name, args))
                    self.other.insert(0, args)
            if role in ("user", "tool"):
                self.last_role, self.last_text = str(role), text
        self.all_text = "\n".join(self.user + self.other)

    def candidates(self, name: str) -> list[str]:
        """Values for parameter ``name``, best first, without repeats."""
        found: list[str] = []
        pattern = next((value for key, value in _KINDS if key.search(name)), None)
        if name in ("first_name", "last_name"):
            group = 1 if name == "first_name" else 2
            for text in self.user:
                found += [m.group(group) for m in _NAME_RE.finditer(text)]
        elif pattern is not None:
            for text in self.user:
                found += pattern.findall(text)
        singular = name[:-1] if name.endswith("_ids") else name
        field = re.compile(rf'"{re.escape(singular)}":\s*"([^"]*)"')
        for text in self.other:
            found += field.findall(text)
            if pattern is not None:
                found += pattern.findall(text)
        return list(dict.fromkeys(found))


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _value(name: str, schema: dict[str, Any], conv: _Conversation, rng: random.Random) -> Any:
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        lowered = conv.all_text.lower()
        mentioned = [v for v in enum if str(v).lower() in lowered]
        return mentioned[0] if mentioned else rng.choice(enum)
    candidates = conv.candidates(name)
    kind = schema.get("type")
    if kind == "array":
        if not candidates:
            return []
        k = 2 if len(candidates) > 1 and rng.random() < 0.25 else 1
        return candidates[:k] if rng.random() < FIRST_CANDIDATE_PROB else rng.sample(candidates, k)
    if candidates and kind in (None, "string"):
        return candidates[0] if rng.random() < FIRST_CANDIDATE_PROB else rng.choice(candidates)
    if kind == "integer":
        return rng.randint(1, 10)
    if kind == "number":
        return round(rng.uniform(1, 100), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "object":
        return {}
    last_user = conv.user[0] if conv.user else ""
    return " ".join(last_user.split()[:8])


def _pick_tool(tools: list[dict[str, Any]], conv: _Conversation, rng: random.Random) -> dict[str, Any]:
    weights = []
    for tool in tools:
        _, required = _params(tool)
        grounded = sum(1 for r in required if conv.candidates(r))
        # no required parameter: nothing in the conversation points at this tool
        weight = 1.0 + (4.0 * grounded / len(required) if required else 0.5)
        if any(name == _function(tool)["name"] for name, _ in conv.calls):
            weight *= 0.2
        weights.append(weight)
    return rng.choices(tools, weights=weights)[0]


def _summary(conv: _Conversation) -> str:
    """A sentence grounded in the last tool result or user message."""
    if conv.last_role == "tool":
        if conv.last_text.startswith("Error"):
            return f"Sorry, that did not work: {' '.join(conv.last_text.split()[:16])}"
        try:
            data = json.loads(conv.last_text)
        except ValueError:
            return f"Here is the result: {' '.join(conv.last_text.split()[:24])}"
        if isinstance(data, dict):
            facts = [f"{k}: {v}" for k, v in data.items() if isinstance(v, str | int | float)][:6]
            return "Here is what I found: " + ", ".join(facts) + "." if facts else "Done."
        return f"Here is the result: {json.dumps(data)[:160]}"
    ids = [v for _, pattern in _KINDS for text in conv.user[:1] for v in pattern.findall(text)]
    if ids:
        return f"Thanks. To confirm, this is about {', '.join(dict.fromkeys(ids))}. Shall I proceed (yes/no)?"
    return "Could you give me your email, or your name and zip code, and the order id?"


def tool_answer(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    tool_choice: str,
    n_tokens: int,
    max_tokens: int | None,
    rng: random.Random,
    malformed_rate: float,
) -> ToolAnswer:
    """The answer to a tool-enabled chat request (see the module doc).

    ``tool_choice`` is ``"auto"``, ``"required"`` or the name of a function;
    ``n_tokens`` is the sampled length of a text answer.
    """
    conv = _Conversation(messages)
    # Same number of draws on every path up to here: the rest of the answer does
    # not depend on which branch an earlier draw took.
    call_u, malformed_u, malformed_kind = rng.random(), rng.random(), rng.choice(MALFORMED_KINDS)
    k = conv.since_user
    wants_call = tool_choice != "auto" or call_u < (CALL_PROBABILITY[k] if k < len(CALL_PROBABILITY) else 0.0)
    if not wants_call:
        sentence = _summary(conv)
        text = f"{sentence} {filler(n_tokens - len(sentence.split()), rng)}".strip()
        return ToolAnswer(text, None, max(n_tokens, 1), "stop")

    named = [t for t in tools if _function(t)["name"] == tool_choice]
    tool = named[0] if named else _pick_tool(tools, conv, rng)
    name: str = _function(tool)["name"]
    props, required = _params(tool)
    args = {p: _value(p, props[p], conv, rng) for p in required}
    if (name, json.dumps(args)) in conv.calls and props:
        # the same call again would loop: vary one argument
        optional = [p for p in props if p not in args]
        if optional:
            args[optional[0]] = _value(optional[0], props[optional[0]], conv, rng)
    arguments = json.dumps(args)
    if malformed_u < malformed_rate:
        if malformed_kind == "unknown_tool":
            name += "_v2"
        elif malformed_kind == "missing_argument" and required:
            dropped = rng.choice(required)
            arguments = json.dumps({p: v for p, v in args.items() if p != dropped})
        else:
            arguments = arguments[: max(1, len(arguments) // 2)]
    words = arguments.split(" ")
    finish = "tool_calls"
    if max_tokens is not None and len(words) > max_tokens:
        arguments, finish = " ".join(words[:max_tokens]), "length"
    call = {
        "id": f"call_{rng.getrandbits(96):024x}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }
    return ToolAnswer("", [call], max(1, len(arguments.split(" "))), finish)
