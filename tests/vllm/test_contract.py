"""The client's contract with a vLLM server, run against two backends: the simulator
(in the default suite) and real vLLM (marked ``vllm``; ``make test-vllm``). Whatever
passes against one must pass against the other: a difference is a simulator bug.

The real model is tiny and random: its words are gibberish, so the tests steer it
with vLLM's own request fields (``logit_bias`` on the end-of-turn token for
``finish_reason`` "stop" or "length", a named ``tool_choice`` for a tool call). The
simulator ignores ``logit_bias`` as it ignores every unknown field; its answers
are 64 tokens long here, so max_tokens picks the finish reason.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from matrix_p2p.errors import FailTask
from matrix_p2p.llm import LLMClient, LLMConfig, LLMError, LLMResponse, wire
from matrix_p2p.sim.config import SimConfig
from matrix_p2p.sim.server import start_sim
from tests.vllm import env

MSGS = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


@dataclass
class Backend:
    name: str
    url: str  # .../v1
    model: str
    max_model_len: int
    # extra request fields that make the answer end on its own / run to max_tokens
    stop_extra: dict[str, Any] = field(default_factory=dict)
    length_extra: dict[str, Any] = field(default_factory=dict)
    tool_extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return self.url.removesuffix("/v1")


@pytest.fixture(params=["sim", pytest.param("vllm", marks=pytest.mark.vllm)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "sim":
        srv = await start_sim(SimConfig(
            model="sim-model", max_model_len=env.MAX_MODEL_LEN, output_tokens="fixed",
            output_tokens_mean=64, step_base_s=0.001, step_per_seq_s=0.0))
        try:
            yield Backend("sim", srv.url, "sim-model", env.MAX_MODEL_LEN)
        finally:
            await srv.stop()
        return
    server: env.VLLMServer = request.getfixturevalue("vllm_server")
    eos = str(env.token_ids()["<|im_end|>"])
    # vLLM 0.32 forces a named call's `<tool_call>{"name": ..., "arguments": ` prefix but
    # not the arguments: a random model writes digits until max_tokens. Favouring the
    # closing braces (and an allowed value) lets the call end, so the parser sees it whole.
    vocab = json.loads((env.MODEL_DIR / "tokenizer.json").read_text())["model"]["vocab"]
    ends = {str(vocab[t]): 100 for t in ("}", '"}', "Paris") if t in vocab}
    yield Backend("vllm", server.url, env.MODEL_NAME, env.MAX_MODEL_LEN,
                  stop_extra={"logit_bias": {eos: 100}},
                  length_extra={"logit_bias": {eos: -100}},
                  tool_extra={"logit_bias": ends})


def client_for(b: Backend) -> LLMClient:
    return LLMClient(LLMConfig(endpoints=[b.url], timeout_s=120, backoff_base_s=0.01,
                               backoff_cap_s=0.05, metrics_poll_s=None))


async def test_chat_and_completion_usage_and_finish_reasons(backend: Backend) -> None:
    async with client_for(backend) as client:
        short = await client.chat(MSGS, role="a", max_tokens=4, temperature=0,
                                  **backend.length_extra)
        ended = await client.chat(MSGS, role="a", max_tokens=200, temperature=0,
                                  **backend.stop_extra)
        text = await client.complete("Once upon a time", role="b", max_tokens=3, temperature=0,
                                     **backend.length_extra)
    for r in (short, ended, text):
        assert isinstance(r, LLMResponse), r
        assert r.model == backend.model
        assert r.prompt_tokens > 0
        assert r.attempts == 1
        assert r.endpoint == backend.base_url
    assert (short.finish_reason, short.completion_tokens) == ("length", 4)
    assert (text.finish_reason, text.completion_tokens) == ("length", 3)
    assert ended.finish_reason == "stop"
    assert 1 <= ended.completion_tokens < 200
    assert isinstance(short.text, str) and isinstance(text.text, str)
    by_role = client.usage_by_role()
    assert by_role["a"].completion_tokens == short.completion_tokens + ended.completion_tokens
    assert by_role["a"].prompt_tokens == short.prompt_tokens + ended.prompt_tokens
    assert by_role["b"].completion_tokens == 3


async def test_prompt_over_max_model_len_is_a_permanent_failure(backend: Backend) -> None:
    L = backend.max_model_len
    async with client_for(backend) as client:
        r = await client.chat([{"role": "user", "content": "word " * (L * 2)}], max_tokens=8)
        too_many = await client.chat(MSGS, max_tokens=L + 1)
        [stats] = client.snapshot()
    assert isinstance(r, LLMError), r
    assert (r.kind, r.status, r.attempts, r.transient) == ("bad_request", 400, 1, False)
    assert f"This model's maximum context length is {L} tokens. However, your prompt" in r.message
    assert "\n" not in r.message and not r.message.startswith("HTTP 400: {")
    with pytest.raises(FailTask, match="maximum context length"):
        r.unwrap()
    assert isinstance(too_many, LLMError), too_many
    assert (too_many.kind, too_many.status, too_many.attempts) == ("bad_request", 400, 1)
    assert f"max_tokens={L + 1} cannot be greater than max_model_len={L}" in too_many.message
    assert stats.errors_by_kind == {"bad_request": 2}


async def test_max_tokens_past_the_window_is_clamped_to_it(backend: Backend) -> None:
    L = backend.max_model_len
    async with client_for(backend) as client:
        probe = await client.complete("word " * 100, max_tokens=1)
        assert isinstance(probe, LLMResponse), probe
        words = int((L - 30) * 100 / probe.prompt_tokens)
        r = await client.complete("word " * words, max_tokens=200, temperature=0,
                                  **backend.length_extra)
    assert isinstance(r, LLMResponse), r
    assert L - 60 < r.prompt_tokens < L - 1
    assert (r.finish_reason, r.prompt_tokens + r.completion_tokens) == ("length", L)


async def test_named_tool_choice_comes_back_as_a_tool_turn(backend: Backend) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    async with client_for(backend) as client:
        r = await client.chat(MSGS, max_tokens=60, temperature=0, tools=[WEATHER],
                              tool_choice=choice, **backend.tool_extra)
        assert isinstance(r, LLMResponse), r
        assert len(r.tool_calls) == 1, r
        call = r.tool_calls[0]
        assert call.name == "get_weather" and call.id
        # the arguments as the model wrote them: JSON (the random model's may not be an
        # object, which parse_arguments reports to the agent as a ToolCallError)
        args = json.loads(call.arguments)
        if backend.name == "sim":
            assert call.parse_arguments()["city"] in ("Paris", "Rome")
        assert args is not None
        # the call and its result go back into the conversation; the template renders both
        follow = [*MSGS, r.message(),
                  {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp": 21})}]
        again = await client.chat(follow, max_tokens=4, temperature=0, tools=[WEATHER],
                                  **backend.length_extra)
    assert isinstance(again, LLMResponse), again
    assert again.prompt_tokens > r.prompt_tokens


async def test_metrics_names_and_labels(backend: Backend) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(backend.base_url + wire.METRICS_PATH) as resp:
            assert resp.status == 200
            text = await resp.text()
        async with http.get(backend.url + "/models") as resp:
            models = await resp.json()
    assert wire.parse_waiting(text) == 0
    assert wire.parse_running(text) == 0
    usage = wire.parse_kv_cache_usage(text)
    assert usage is not None and 0.0 <= usage <= 1.0
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_waiting_by_reason",
                 "vllm:kv_cache_usage_perc", "vllm:num_requests_running",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total"):
        [line, *_] = [ln for ln in text.splitlines() if ln.startswith(name + "{")]
        assert f'model_name="{backend.model}"' in line and 'engine="0"' in line, line
    reasons = {ln.split('reason="')[1].split('"')[0] for ln in text.splitlines()
               if ln.startswith("vllm:num_requests_waiting_by_reason{")}
    assert {"capacity", "deferred"} <= reasons
    assert models["data"][0]["id"] == backend.model
    assert models["data"][0]["max_model_len"] == backend.max_model_len


async def test_client_polls_the_queue_depth(backend: Backend) -> None:
    config = LLMConfig(endpoints=[backend.url], metrics_poll_s=0.05)
    async with LLMClient(config) as client:
        ep = next(iter(client._endpoints))
        await client._poll_metrics(ep, 1.0)
        assert ep.metrics_supported is True


async def test_error_body_shape(backend: Backend) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(backend.url + "/chat/completions",
                             json={"model": backend.model, "messages": [
                                 {"role": "user", "content": "word " * 3 * backend.max_model_len}
                             ]}) as resp:
            assert resp.status == 400
            body = await resp.json()
    err = body["error"]
    assert err["type"] == "BadRequestError" and err["code"] == 400
    assert err["param"] == "input_tokens"
    assert "maximum context length" in err["message"]
