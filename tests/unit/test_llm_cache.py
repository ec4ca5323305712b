"""The LLM response cache's pure parts: the key holds everything that decides the answer
(model, messages, sampling parameters, seed, response_format) and nothing about delivery;
a hit generates no tokens (they count as saved, and the turn says it was a hit); a store
that fails is a miss, never a failed call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import structlog

from matrix_p2p.agent import Context
from matrix_p2p.bus import MemoryBus
from matrix_p2p.envelope import new_task
from matrix_p2p.errors import BusError
from matrix_p2p.llm.cache import ResponseCache, cache_key
from matrix_p2p.llm.types import LLMResponse, LLMResult
from matrix_p2p.runtime.rowformat import to_row
from matrix_p2p.workflow import spec as specmod

BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "q"}], "max_tokens": 64,
                        "temperature": 0.0, "seed": 1}


@pytest.mark.parametrize("change", [
    {"seed": 2},
    {"seed": None},
    {"temperature": 0.7},
    {"max_tokens": 65},
    {"top_p": 0.9},
    {"messages": [{"role": "user", "content": "q2"}]},
    {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {}}}},
    {"tools": [{"type": "function", "function": {"name": "f"}}]},
])
def test_the_key_changes_with_what_decides_the_answer(change: dict[str, Any]) -> None:
    assert cache_key("chat", "m", {**BODY, **change}) != cache_key("chat", "m", BODY)


def test_the_key_changes_with_the_model_and_the_kind() -> None:
    assert cache_key("chat", "m2", BODY) != cache_key("chat", "m", BODY)
    assert cache_key("complete", "m", BODY) != cache_key("chat", "m", BODY)
    # the body's own model is the one given: no way to disagree with it
    assert cache_key("chat", "m", {**BODY, "model": "other"}) == cache_key("chat", "m", BODY)


def test_the_key_ignores_delivery_and_key_order() -> None:
    assert cache_key("chat", "m", {**BODY, "stream": True,
                                   "stream_options": {"include_usage": True}}) == \
        cache_key("chat", "m", BODY)
    assert cache_key("chat", "m", dict(reversed(BODY.items()))) == cache_key("chat", "m", BODY)
    key = cache_key("chat", "m", BODY)
    assert len(key) == 64  # a valid JetStream key: hex only
    assert key.isalnum()


ANSWER = LLMResponse(text="hello", prompt_tokens=30, completion_tokens=7, model="m",
                     endpoint="http://a", finish_reason="stop")


async def test_a_hit_is_the_answer_with_no_tokens_and_counts_the_saving() -> None:
    cache = ResponseCache(await MemoryBus().key_value("C"))
    assert await cache.get("k") is None
    await cache.put("k", ANSWER)
    hit = await cache.get("k")
    assert hit is not None
    assert (hit.text, hit.model, hit.finish_reason, hit.cached) == ("hello", "m", "stop", True)
    assert (hit.prompt_tokens, hit.completion_tokens) == (0, 0)
    s = cache.stats
    assert (s.hits, s.misses, s.saved_prompt_tokens, s.saved_completion_tokens) == (1, 1, 30, 7)


async def test_the_first_answer_stored_wins() -> None:
    cache = ResponseCache(await MemoryBus().key_value("C"))
    await cache.put("k", ANSWER)
    await cache.put("k", LLMResponse(text="other", finish_reason="stop"))
    hit = await cache.get("k")
    assert hit is not None
    assert hit.text == "hello"


async def test_an_answer_without_a_finish_reason_is_not_kept() -> None:
    cache = ResponseCache(await MemoryBus().key_value("C"))
    await cache.put("k", LLMResponse(text="half"))
    assert await cache.get("k") is None


class Broken:
    async def create(self, key: str, value: bytes = b"1") -> bool:
        raise BusError("key-value create: no responders")

    async def get(self, key: str) -> bytes | None:
        raise BusError("key-value get: no responders")


async def test_a_failing_store_is_a_miss_and_is_logged_once() -> None:
    cache = ResponseCache(Broken())
    with structlog.testing.capture_logs() as logs:
        await cache.put("k", ANSWER)
        assert await cache.get("k") is None
        assert await cache.get("k") is None
    assert [e["op"] for e in logs if e["event"] == "llm.cache_error"] == ["put", "get"]
    assert cache.stats.misses == 2


SPEC = specmod.parse("""
name: ca
roles:
  r: {agent: "matrix_p2p_agents.dummy:Talker"}
routing: {type: cycle, roles: [r], max_turns: 1}
""", path="ca.yaml")


class Alternating:
    """A ChatClient whose odd calls are generated (10 + 1 tokens) and even ones cache hits."""

    def __init__(self) -> None:
        self.calls = 0

    async def chat(self, messages: Sequence[Mapping[str, Any]], **params: Any) -> LLMResult:
        self.calls += 1
        if self.calls % 2 == 0:
            return LLMResponse(text="again", cached=True, model="m", finish_reason="stop")
        return LLMResponse(text="new", prompt_tokens=10, completion_tokens=1,
                           endpoint="http://a", model="m", finish_reason="stop")


async def test_a_hit_adds_no_tokens_to_the_row_and_the_row_says_it_was_a_hit() -> None:
    task = new_task(task_id="t1", workflow="ca", role="r", row={}, now=0.0)
    ctx = Context(task=task, role=SPEC.roles["r"], spec=SPEC, llm=Alternating(),
                  resource=SPEC.llm_for("r"), log=structlog.get_logger(), now=0.0)
    await ctx.chat([])
    await ctx.chat([])
    ctx.say("a")
    await ctx.chat([])
    ctx.say("b")
    await ctx.chat([])
    ctx.say("c")
    assert [(t.llm_calls, t.cache_hits) for t in task.turns] == [(2, 1), (1, 0), (1, 1)]
    assert (task.usage().prompt_tokens, task.usage().completion_tokens) == (20, 2)
    dialogue = to_row(task)["dialogue"]
    assert [d.get("cache_hits") for d in dialogue] == [1, None, 1]
    assert dialogue[2]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}


def test_run_and_worker_take_no_cache() -> None:
    from matrix_p2p import cli

    parser = cli.build_parser()
    assert parser.parse_args(["run", "coral", "--no-cache"]).no_cache
    assert not parser.parse_args(["run", "coral"]).no_cache
    assert parser.parse_args(["worker", "coral", "--role", "all", "--no-cache"]).no_cache
