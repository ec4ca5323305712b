"""The LLM response cache on a real nats-server with the simulator: a ``--new-version`` run
after changing only the judge's prompt asks the servers only for the judge's turns; the
teacher's and student's come from the cache, with no tokens in the rows (they were counted
in the first run's rows) and ``cache_hits`` saying so; the summary counts the hits and the
tokens saved; ``--no-cache`` asks everything again. Structured outputs through the same
run: the simulator answers the schema and the agent gets a validated value."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.bus import ConnectOptions
from matrix_p2p.runtime.local_run import RunOptions, RunResult, run_workflow
from matrix_p2p.runtime.summary import render, summarize
from matrix_p2p.workflow.spec import WorkflowSpec
from tests.conftest import make_spec
from tests.integration.helpers import read_rows

QUESTIONS = [{"id": f"q{i}", "question": f"Which colour is number {i}?",
              "choices": ["red", "green", "blue", "grey"], "answer": "B"} for i in range(4)]

CORAL = """
source: {path: rows.jsonl, id_field: id}
resources:
  llm:
    default: {cache: true, seed: 1, temperature: 0.0, max_tokens: 64}
roles:
  teacher:
    agent: matrix_p2p_agents.coral:Teacher
    system: You are a teacher.
    prompt: 'End with a line of the form "Answer: <letter>".'
  student:
    agent: matrix_p2p_agents.coral:Student
    system: You are a student.
    prompt: 'End with a line of the form "Answer: <letter>".'
  judge:
    agent: matrix_p2p_agents.coral:Judge
    system: You check answers.
    prompt: 'JUDGE_PROMPT Reply with one line "Verdict: AGREE or DISAGREE" and "Final: <letter>".'
routing: {type: cycle, roles: [teacher, student, judge], stop_when: agreed, max_turns: 9}
limits: {ack_wait_s: 10, retry_backoff_s: 0.05}
"""


async def _run(spec: WorkflowSpec, nats: EmbeddedNats, out: Path, *, version: str = "check",
               cache: bool = True) -> RunResult:
    opts = RunOptions(out=str(out), nats=ConnectOptions(url=nats.url, name="test"),
                      progress=False, drain_timeout_s=10, version_mode=version,  # type: ignore[arg-type]
                      cache=cache)
    async with asyncio.timeout(120):
        return await run_workflow(spec, opts, asyncio.Event())


def _turns(rows: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    return [t for r in rows for t in r["dialogue"] if t["role"] == role]


def _tokens(turns: list[dict[str, Any]]) -> int:
    return sum(t["usage"]["prompt_tokens"] + t["usage"]["completion_tokens"] for t in turns)


async def test_a_new_version_with_a_new_judge_prompt_re_asks_only_the_judge(
        nats_server: EmbeddedNats, tmp_path: Path) -> None:
    name = f"cache{id(tmp_path) % 100000}"
    spec = make_spec(tmp_path, CORAL.replace("JUDGE_PROMPT", "Do they agree?"), QUESTIONS,
                     name=name)
    first = await _run(spec, nats_server, tmp_path / "first.jsonl")
    rows1 = read_rows(tmp_path / "first.jsonl")
    assert len(rows1) == len(QUESTIONS)
    assert all(r["status"] == "done" for r in rows1)
    assert first.cache is not None
    assert first.cache.hits == 0
    assert not any(t.get("cache_hits") for r in rows1 for t in r["dialogue"])

    spec2 = make_spec(tmp_path, CORAL.replace("JUDGE_PROMPT", "Compare them carefully."),
                      QUESTIONS, name=name)
    second = await _run(spec2, nats_server, tmp_path / "second.jsonl", version="new")
    rows2 = read_rows(tmp_path / "second.jsonl")
    assert len(rows2) == len(QUESTIONS)
    assert all(r["status"] == "done" for r in rows2)
    # the same dialogues (the judge's verdict follows the answers), asked only for the judge
    assert [len(r["dialogue"]) for r in rows2] == [len(r["dialogue"]) for r in rows1]
    discussants = _turns(rows2, "teacher") + _turns(rows2, "student")
    assert discussants
    assert all(t.get("cache_hits") == 1 for t in discussants)
    assert _tokens(discussants) == 0  # counted in the first run's rows, not again
    judges = _turns(rows2, "judge")
    assert all(not t.get("cache_hits") for t in judges)
    assert all(t["usage"]["completion_tokens"] > 0 for t in judges)
    assert second.cache is not None
    assert second.cache.hits == len(discussants)
    assert second.cache.saved_completion_tokens == sum(
        t["usage"]["completion_tokens"] for t in _turns(rows1, "teacher") + _turns(rows1, "student"))
    # generated tokens: the rows sum to what the servers were asked for, hits not included
    s = summarize(second, spec2)
    assert s.prompt_tokens + s.completion_tokens == sum(_tokens(r["dialogue"]) for r in rows2)
    assert s.completion_tokens == sum(t["usage"]["completion_tokens"] for t in judges)
    assert f"response cache: {len(discussants):,} hits" in render(s)

    spec3 = make_spec(tmp_path, CORAL.replace("JUDGE_PROMPT", "Once more."), QUESTIONS,
                      name=name)
    third = await _run(spec3, nats_server, tmp_path / "third.jsonl", cache=False,
                       version="new")
    rows3 = read_rows(tmp_path / "third.jsonl")
    assert third.cache is None
    assert not any(t.get("cache_hits") for r in rows3 for t in r["dialogue"])
    assert all(t["usage"]["completion_tokens"] > 0 for r in rows3 for t in r["dialogue"])


STRUCTURED = """
source: {path: rows.jsonl}
roles:
  grader: {agent: "tests.integration.structured_agents:Grader"}
routing: {type: cycle, roles: [grader], max_turns: 1}
"""


async def test_structured_outputs_through_a_run_with_the_simulator(
        nats_server: EmbeddedNats, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, STRUCTURED, [{"text": f"essay {i}"} for i in range(5)])
    result = await _run(spec, nats_server, tmp_path / "graded.jsonl")
    rows = read_rows(tmp_path / "graded.jsonl")
    assert result.done == 5
    for r in rows:
        assert r["status"] == "done"
        assert r["result"]["grade"]["verdict"] in ("pass", "fail")
        assert 1 <= r["result"]["grade"]["score"] <= 10
        assert r["usage"]["total"]["completion_tokens"] > 0
