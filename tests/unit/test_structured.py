"""Structured outputs: the request's ``response_format``, validation of the answer, the
re-ask decision and its limit, the task failure after it, tokens of every attempt counted
once; and the simulator's schema-valid JSON, deterministic under its seed."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec
import pytest
import structlog

from matrix_p2p.agent import Context
from matrix_p2p.envelope import new_task
from matrix_p2p.errors import FailTask
from matrix_p2p.llm import structured
from matrix_p2p.llm.types import LLMError, LLMResponse, LLMResult
from matrix_p2p.sim.answer import plan_answer
from matrix_p2p.sim.config import SimConfig
from matrix_p2p.sim.protocol import BadRequest, parse_request
from matrix_p2p.sim.schema_json import answer_json, generate
from matrix_p2p.workflow import spec as specmod

SPEC = specmod.parse("""
name: st
roles:
  r: {agent: "matrix_p2p_agents.dummy:Talker"}
routing: {type: cycle, roles: [r], max_turns: 1}
""", path="st.yaml")


class Step(msgspec.Struct):
    text: str
    score: int


class Review(msgspec.Struct):
    verdict: Literal["AGREE", "DISAGREE"]
    score: float
    steps: list[Step]
    note: str | None = None
    ok: bool = True


class Scripted:
    """A ChatClient answering the given texts in turn; the n-th call costs 10n + n tokens."""

    def __init__(self, *texts: str) -> None:
        self.texts = list(texts)
        self.requests: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []

    async def chat(self, messages: Sequence[Mapping[str, Any]], **params: Any) -> LLMResult:
        self.requests.append(([dict(m) for m in messages], params))
        n = len(self.requests)
        return LLMResponse(text=self.texts[min(n, len(self.texts)) - 1],
                           prompt_tokens=10 * n, completion_tokens=n)


def _ctx(llm: Scripted) -> tuple[Context, Any]:
    task = new_task(task_id="t1", workflow="st", role="r", row={}, now=0.0)
    ctx = Context(task=task, role=SPEC.roles["r"], spec=SPEC, llm=llm,
                  resource=SPEC.llm_for("r"), log=structlog.get_logger(), now=0.0)
    return ctx, task


GOOD = '{"text": "x", "score": 3}'
BAD = '{"text": "x", "score": "three"}'


# -- the pure parts ---------------------------------------------------------------------
def test_the_wire_format_is_openai_json_schema_from_msgspec() -> None:
    fmt = structured.Structured(Step)
    assert fmt.wire() == {"type": "json_schema", "json_schema": {
        "name": "Step", "schema": msgspec.json.schema(Step)}}
    assert structured.Structured({"type": "object"}, name="my answer!").wire()[
        "json_schema"]["name"] == "my_answer_"


def test_a_struct_answer_is_decoded_and_an_invalid_one_names_the_field() -> None:
    assert structured.Structured(Step).parse(GOOD) == Step(text="x", score=3)
    with pytest.raises(structured.Invalid, match=r"Expected `int`, got `str` - at `\$.score`"):
        structured.Structured(Step).parse(BAD)
    with pytest.raises(structured.Invalid, match="not valid JSON"):
        structured.Structured(Step).parse("Answer: B")


@pytest.mark.parametrize(("value", "error"), [
    ({"verdict": "MAYBE", "score": 1, "steps": []}, r"one of \['AGREE', 'DISAGREE'\].*\$.verdict"),
    ({"verdict": "AGREE", "steps": []}, "missing required field `score`"),
    ({"verdict": "AGREE", "score": 1, "steps": [{"text": "a", "score": 1.5}]},
     r"`integer`, got `number` - at `\$.steps\[0\].score`"),
    ({"verdict": "AGREE", "score": True, "steps": []}, r"got `boolean` - at `\$.score`"),
    ({"verdict": "AGREE", "score": 1, "steps": [], "note": 3}, "matches none of anyOf"),
])
def test_a_schema_dict_is_checked_with_the_path_of_the_bad_field(value: Any, error: str) -> None:
    schema = msgspec.json.schema(Review)
    with pytest.raises(structured.Invalid, match=error):
        structured.check(value, schema)
    structured.check({"verdict": "AGREE", "score": 1, "steps": [{"text": "a", "score": 2}]},
                     schema)


def test_re_asks_stop_at_the_limit() -> None:
    assert structured.should_reask(0, 2)
    assert structured.should_reask(1, 2)
    assert not structured.should_reask(2, 2)
    assert not structured.should_reask(0, 0)


def test_the_re_ask_carries_the_answer_and_the_error() -> None:
    msgs = structured.reask_messages([{"role": "user", "content": "q"}], "bad", "the error")
    assert msgs[:2] == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}]
    assert msgs[2]["role"] == "user"
    assert "the error" in msgs[2]["content"]


# -- ctx.chat -------------------------------------------------------------------------
async def test_a_valid_answer_comes_back_parsed_and_the_request_carries_the_schema() -> None:
    llm = Scripted(GOOD)
    ctx, _ = _ctx(llm)
    got = (await ctx.chat([{"role": "user", "content": "q"}], response_format=Step)).unwrap()
    assert got.parsed == Step(text="x", score=3)
    assert llm.requests[0][1]["response_format"] == structured.Structured(Step).wire()


async def test_an_invalid_answer_is_re_asked_with_the_error_and_every_attempt_counts_once() -> None:
    llm = Scripted(BAD, GOOD)
    ctx, task = _ctx(llm)
    got = (await ctx.chat([{"role": "user", "content": "q"}], response_format=Step)).unwrap()
    assert got.parsed == Step(text="x", score=3)
    assert len(llm.requests) == 2
    second = llm.requests[1][0]
    assert second[1] == {"role": "assistant", "content": BAD}
    assert "$.score" in second[2]["content"]
    ctx.say("done")
    assert task.usage().prompt_tokens == 10 + 20
    assert task.usage().completion_tokens == 1 + 2
    assert task.turns[-1].llm_calls == 2


async def test_after_the_limit_the_task_fails_with_the_reason_and_keeps_the_tokens() -> None:
    llm = Scripted(BAD)
    ctx, task = _ctx(llm)
    got = await ctx.chat([{"role": "user", "content": "q"}], response_format=Step, max_reasks=2)
    assert isinstance(got, LLMError)
    assert got.kind == "invalid_output"
    assert not got.transient  # a failed task, not a retried hop
    assert len(llm.requests) == 3
    with pytest.raises(FailTask, match=r"invalid_output.*Step after 3 attempt\(s\).*\$.score"):
        got.unwrap()
    ctx.finish()  # what the worker does when the agent fails the task
    assert task.usage().prompt_tokens == 10 + 20 + 30
    assert task.usage().completion_tokens == 1 + 2 + 3


async def test_a_transport_error_is_returned_as_is_without_re_asking() -> None:
    class Down:
        calls = 0

        async def chat(self, messages: Sequence[Mapping[str, Any]], **params: Any) -> LLMResult:
            Down.calls += 1
            return LLMError(kind="unavailable", message="down")

    task = new_task(task_id="t1", workflow="st", role="r", row={}, now=0.0)
    ctx = Context(task=task, role=SPEC.roles["r"], spec=SPEC, llm=Down(),
                  resource=SPEC.llm_for("r"), log=structlog.get_logger(), now=0.0)
    got = await ctx.chat([], response_format=Step)
    assert isinstance(got, LLMError)
    assert got.kind == "unavailable"
    assert Down.calls == 1


# -- the simulator ----------------------------------------------------------------------
SCHEMAS: list[dict[str, Any]] = [
    msgspec.json.schema(Review),
    {"type": "object", "properties": {
        "a": {"type": "integer", "minimum": 5, "maximum": 7},
        "b": {"type": "number", "minimum": -1, "maximum": 1},
        "c": {"type": "array", "items": {"type": "string", "maxLength": 4}, "minItems": 2,
              "maxItems": 2},
        "d": {"type": "object", "properties": {"e": {"enum": [1, "x", None]},
                                               "f": {"const": "k"}}},
        "g": {"type": ["boolean", "null"]},
        "h": {"type": "string", "minLength": 40},
    }, "required": ["a", "b", "c", "d", "g", "h"]},
]


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("seed", range(20))
def test_the_simulator_answers_json_that_follows_the_schema(schema: dict[str, Any],
                                                            seed: int) -> None:
    text = answer_json(schema, random.Random(seed))
    structured.check(msgspec.json.decode(text), schema)
    if schema is SCHEMAS[0]:
        assert isinstance(structured.Structured(Review).parse(text), Review)
    assert answer_json(schema, random.Random(seed)) == text  # deterministic


def test_the_simulator_varies_with_the_seed() -> None:
    texts = {answer_json(SCHEMAS[0], random.Random(s)) for s in range(10)}
    assert len(texts) > 5


def test_a_recursive_schema_ends() -> None:
    schema = {"$ref": "#/$defs/N", "$defs": {"N": {"type": "object", "properties": {
        "kids": {"type": "array", "items": {"$ref": "#/$defs/N"}}}, "required": ["kids"]}}}
    structured.check(generate(schema, random.Random(1)), schema)


def _body(**extra: Any) -> bytes:
    return msgspec.json.encode({"messages": [{"role": "user", "content": "hi"}], **extra})


def test_the_simulator_honours_response_format_in_a_chat_request() -> None:
    req = parse_request(_body(response_format=structured.Structured(Review).wire(), seed=3),
                        "chat", "m")
    cfg = SimConfig(seed=7)
    answer = plan_answer(cfg, req)
    assert isinstance(structured.Structured(Review).parse(answer.text), Review)
    assert answer.finish_reason == "stop"
    assert answer.completion_tokens > 0
    assert plan_answer(cfg, req).text == answer.text  # same request, same seed
    other = plan_answer(SimConfig(seed=8), req)
    plain = plan_answer(cfg, parse_request(_body(seed=3), "chat", "m"))
    assert (other.text, plain.text) != (answer.text, answer.text)
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(plain.text)  # without it: text, as before


@pytest.mark.parametrize(("fmt", "error"), [
    ({"type": "json_schema"}, "json_schema.schema must be an object"),
    ({"type": "yaml"}, "response_format.type must be"),
    ("json", "response_format must be an object"),
])
def test_a_malformed_response_format_is_a_bad_request(fmt: Any, error: str) -> None:
    with pytest.raises(BadRequest, match=error):
        parse_request(_body(response_format=fmt), "chat", "m")


def test_json_object_gets_an_object_and_text_gets_text() -> None:
    req = parse_request(_body(response_format={"type": "json_object"}), "chat", "m")
    assert isinstance(msgspec.json.decode(plan_answer(SimConfig(), req).text), dict)
    assert parse_request(_body(response_format={"type": "text"}), "chat", "m").response_format \
        is None
