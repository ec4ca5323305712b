"""The workflow's model settings reach the model server: every field in the request body,
the key from ``api_key_env`` as a bearer token, and an agent's own arguments win."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from matrix_p2p.agent import Context
from matrix_p2p.envelope import new_task
from matrix_p2p.errors import ConfigError
from matrix_p2p.resources.llm import open_llms
from matrix_p2p.workflow import spec as specmod
from tests.integration.test_llm_client import FakeOpenAI, servers

__all__ = ["servers"]  # the fixture, imported for these tests

WF = """
name: wire
resources:
  llm:
    default:
      model: base-model
      api_key_env: MX_WIRE_KEY
      max_tokens: 100
      temperature: 0.5
      top_p: 0.9
      stop: ["</answer>"]
      seed: 7
      extra_body: {repetition_penalty: 1.05, top_k: 20}
roles:
  a: {agent: "tests.integration.chat_agents:Asker"}
  b:
    agent: "tests.integration.chat_agents:Asker"
    llm_settings: {model: judge-model, api_key_env: MX_WIRE_JUDGE_KEY, max_tokens: 8,
                   temperature: 0, top_p: 0.5, stop: "###", seed: 1, extra_body: {top_k: 5}}
routing: {type: cycle, roles: [a, b]}
"""
MSGS = [{"role": "user", "content": "hi"}]


def ctx(wf: specmod.WorkflowSpec, role: str, llm: Any) -> Context:
    task = new_task(task_id="t1", workflow=wf.name, role=role, row={}, now=0.0)
    return Context(task=task, role=wf.roles[role], spec=wf, llm=llm, resource=wf.llm_for(role),
                   log=structlog.get_logger(), now=0.0)


async def test_every_setting_reaches_the_server_and_the_call_wins(
    servers: Callable[[], Awaitable[FakeOpenAI]], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await servers()
    monkeypatch.setenv("MX_WIRE_KEY", "sk-resource-secret")
    monkeypatch.setenv("MX_WIRE_JUDGE_KEY", "sk-judge-secret")
    wf = specmod.parse(WF, path="wf.yaml")
    with capture_logs() as logs:
        async with open_llms(wf, ["a", "b"], [s.url]) as llms:
            assert (await ctx(wf, "a", llms.by_role["a"]).chat(MSGS)).ok
            assert (await ctx(wf, "b", llms.by_role["b"]).chat(MSGS)).ok
            assert (await ctx(wf, "a", llms.by_role["a"]).chat(
                MSGS, temperature=1.3, model="call-model", top_k=1, stop=None)).ok
    a, b, call = s.bodies
    assert {k: a[k] for k in a if k != "messages"} == {
        "model": "base-model", "max_tokens": 100, "temperature": 0.5, "top_p": 0.9,
        "stop": ["</answer>"], "seed": 7, "repetition_penalty": 1.05, "top_k": 20}
    assert {k: b[k] for k in b if k != "messages"} == {
        "model": "judge-model", "max_tokens": 8, "temperature": 0.0, "top_p": 0.5,
        "stop": "###", "seed": 1, "repetition_penalty": 1.05, "top_k": 5}
    assert (call["model"], call["temperature"], call["top_k"], call["stop"]) == (
        "call-model", 1.3, 1, None)
    assert call["top_p"] == 0.9  # not given by the call: the workflow's
    assert s.auth == ["Bearer sk-resource-secret", "Bearer sk-judge-secret",
                      "Bearer sk-resource-secret"]
    assert not [e for e in logs if "secret" in repr(e)]  # the key is never logged


async def test_a_missing_key_variable_is_one_line_at_start(
    servers: Callable[[], Awaitable[FakeOpenAI]], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await servers()
    wf = specmod.parse(WF, path="wf.yaml")
    monkeypatch.delenv("MX_WIRE_KEY", raising=False)
    monkeypatch.setenv("MX_WIRE_JUDGE_KEY", "sk-judge-secret")
    with pytest.raises(ConfigError) as err:
        async with open_llms(wf, ["a", "b"], [s.url]):
            pass
    assert str(err.value) == ("wf.yaml: resources.llm.default.api_key_env: environment "
                              "variable MX_WIRE_KEY is not set (or empty)")
    monkeypatch.setenv("MX_WIRE_KEY", "sk-resource-secret")
    monkeypatch.setenv("MX_WIRE_JUDGE_KEY", "")
    with pytest.raises(ConfigError) as err:
        async with open_llms(wf, ["a", "b"], [s.url]):
            pass
    assert str(err.value) == (
        "wf.yaml: roles.b.llm_settings.api_key_env: environment variable MX_WIRE_JUDGE_KEY is "
        "not set (or empty) (the key for resources.llm.default)")
    assert s.requests == 0


async def test_without_api_key_env_openai_api_key_is_sent_when_set(
    servers: Callable[[], Awaitable[FakeOpenAI]], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await servers()
    wf = specmod.parse(WF.replace("      api_key_env: MX_WIRE_KEY\n", ""), path="wf.yaml")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-default-secret")
    async with open_llms(wf, ["a"], [s.url]) as llms:
        assert (await ctx(wf, "a", llms.by_role["a"]).chat(MSGS)).ok
    monkeypatch.delenv("OPENAI_API_KEY")
    async with open_llms(wf, ["a"], [s.url]) as llms:  # not set: no header, no error
        assert (await ctx(wf, "a", llms.by_role["a"]).chat(MSGS)).ok
    assert s.auth == ["Bearer sk-default-secret", None]
