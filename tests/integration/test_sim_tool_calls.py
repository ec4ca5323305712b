"""Tool calls over HTTP: the official openai client and our LLMClient against a running simulator,
and a whole retail conversation (simulated user, simulated assistant, the real tools)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from matrix_p2p_agents.tau.prompts import assistant_system_prompt, user_system_prompt
from matrix_p2p_agents.tau.retail_tools import call_tool, openai_schemas
from matrix_p2p_agents.tau.reward import evaluate
from matrix_p2p_agents.tau.tasks import fresh_db, load_tasks

from matrix_p2p.llm import LLMClient, LLMConfig, LLMResponse, ToolCallError, tool_message
from matrix_p2p.sim.config import SimConfig
from matrix_p2p.sim.server import SimServer, start_sim

FAST = SimConfig(step_base_s=0.001, step_per_seq_s=0.0, tokens_per_step=16)
TOOLS = openai_schemas()
ASK = [
    {"role": "system", "content": "You are a support agent."},
    {"role": "user", "content": "Hi, I am Sara Doe. What is the status of order #W1234567?"},
]
ORDER_TOOL = {"type": "function", "function": {"name": "get_order_details"}}


@pytest.fixture
async def srv() -> AsyncIterator[SimServer]:
    server = await start_sim(FAST)
    yield server
    await server.stop()


def _openai(server: SimServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=10)


async def test_openai_client_parses_tool_calls(srv: SimServer) -> None:
    async with _openai(srv) as client:
        chat = await client.chat.completions.create(
            model="sim-model",
            messages=ASK,
            tools=TOOLS,
            tool_choice=ORDER_TOOL,
            seed=1,
        )
    choice = chat.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].type == "function" and calls[0].id.startswith("call_")
    assert calls[0].function.name == "get_order_details"
    assert json.loads(calls[0].function.arguments) == {"order_id": "#W1234567"}
    assert chat.usage is not None and chat.usage.completion_tokens >= 1


async def test_openai_client_streams_tool_calls(srv: SimServer) -> None:
    async with _openai(srv) as client:
        stream = await client.chat.completions.create(
            model="sim-model",
            messages=ASK,
            tools=TOOLS,
            tool_choice=ORDER_TOOL,
            stream=True,
            stream_options={"include_usage": True},
        )
        deltas, finish = [], None
        async for chunk in stream:
            if chunk.choices:
                deltas += chunk.choices[0].delta.tool_calls or []
                finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert len(deltas) == 1 and deltas[0].index == 0 and deltas[0].function is not None
    assert deltas[0].function.name == "get_order_details"
    assert json.loads(deltas[0].function.arguments or "") == {"order_id": "#W1234567"}


async def test_tool_choice_none_and_bad_tools_over_http(srv: SimServer) -> None:
    async with _openai(srv) as client:
        chat = await client.chat.completions.create(
            model="sim-model",
            messages=ASK,
            tools=TOOLS,
            tool_choice="none",
        )
        assert chat.choices[0].message.tool_calls in (None, [])
        assert chat.choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.BadRequestError, match="tool_choice names a function that is not in tools"):
            await client.chat.completions.create(
                model="sim-model",
                messages=ASK,
                tools=TOOLS,
                tool_choice={"type": "function", "function": {"name": "nope"}},
            )


async def test_llm_client_returns_tool_calls_and_builds_the_next_messages(srv: SimServer) -> None:
    async with LLMClient(LLMConfig(endpoints=[srv.url], timeout_s=10)) as client:
        result = await client.chat(ASK, tools=TOOLS, tool_choice=ORDER_TOOL, seed=1)
        assert isinstance(result, LLMResponse)
        assert result.finish_reason == "tool_calls" and result.text == ""
        (call,) = result.tool_calls
        assert call.name == "get_order_details"
        assert call.parse_arguments() == {"order_id": "#W1234567"}
        history = [*ASK, result.message(), tool_message(call, '{"status": "delivered"}')]
        assert history[-2]["tool_calls"][0]["id"] == call.id
        assert history[-1] == {"role": "tool", "tool_call_id": call.id, "content": '{"status": "delivered"}'}
        # the simulator accepts the history back and answers it
        again = await client.chat(history, tools=TOOLS, tool_choice="none")
        assert isinstance(again, LLMResponse) and again.tool_calls == () and again.text

        srv.set_faults(tool_call_malformed_rate=1.0)
        bad = [await client.chat(ASK, tools=TOOLS, tool_choice=ORDER_TOOL, seed=s) for s in range(12)]
    problems = set()
    for r in bad:
        assert isinstance(r, LLMResponse)
        (call,) = r.tool_calls
        if call.name != "get_order_details":
            problems.add("unknown_tool")
        elif call.arguments == "{}":
            problems.add("missing_argument")
        else:
            with pytest.raises(
                ToolCallError, match=r"^arguments of 'get_order_details' are not valid JSON: "
            ):
                call.parse_arguments()
            problems.add("bad_json")
    assert len(problems) >= 2


async def _play(client: LLMClient, task_index: int, seed: int) -> tuple[str, list[str], Any, int]:
    """One retail conversation; returns (ending, assistant texts, final db, tool calls made)."""
    task = load_tasks()[task_index]
    db = fresh_db()
    agent: list[dict[str, Any]] = [{"role": "system", "content": assistant_system_prompt()}]
    customer: list[dict[str, Any]] = [
        {"role": "system", "content": user_system_prompt(task)},
        {"role": "user", "content": "Hi! How can I help you today?"},
    ]
    said: list[str] = []
    n_calls = 0
    for _ in range(60):
        reply = (await client.chat(customer, role="user", seed=seed)).unwrap()
        customer.append({"role": "assistant", "content": reply.text})
        if "###" in reply.text:
            return reply.text.splitlines()[-1], said, db, n_calls
        agent.append({"role": "user", "content": reply.text})
        while True:  # the assistant's turn: tool calls until it writes to the customer
            answer = (await client.chat(agent, role="assistant", tools=TOOLS, seed=seed)).unwrap()
            agent.append(answer.message())
            if not answer.tool_calls:
                break
            for call in answer.tool_calls:
                n_calls += 1
                try:
                    result = call_tool(db, call.name, call.parse_arguments())
                except ToolCallError as exc:
                    result = f"Error: {exc}"
                agent.append(tool_message(call, result))
        said.append(answer.text)
        customer.append({"role": "user", "content": answer.text})
    raise AssertionError("the conversation did not end")


async def test_a_retail_conversation_runs_to_an_ending_with_a_reward(srv: SimServer) -> None:
    srv.set_faults(tool_call_malformed_rate=0.1)
    async with LLMClient(LLMConfig(endpoints=[srv.url], timeout_s=10)) as client:
        tasks = load_tasks()
        for index in (0, next(i for i, t in enumerate(tasks) if t.ending == "transfer")):
            ending, said, db, n_calls = await _play(client, index, seed=index)
            assert ending == {"stop": "###STOP###", "transfer": "###TRANSFER###"}[tasks[index].ending]
            assert said and n_calls >= 1
            reward = evaluate(tasks[index], initial_db=fresh_db(), assistant_messages=said, final_db=db)
            assert reward.reward in (0.0, 1.0)
            assert (await _play(client, index, seed=index))[:2] == (ending, said)  # deterministic
