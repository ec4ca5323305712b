"""The agent's per-hop ``Context``: each LLM call's tokens land in exactly one turn (said,
or recorded when the hop ends, also when the agent fails the task), a hop's turns do not
overlap in time, and ``spawn(turns=...)`` refuses turns that would be counted twice."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import structlog

from matrix_p2p.agent import Agent, Context
from matrix_p2p.bus import MemoryBus
from matrix_p2p.envelope import Task, Turn, new_task
from matrix_p2p.errors import FailTask
from matrix_p2p.llm.types import LLMResponse, LLMResult
from matrix_p2p.runtime.hop import AgentBug, AgentFailed
from matrix_p2p.runtime.worker import RoleWorker, WorkerStats
from matrix_p2p.workflow import spec as specmod

SPEC = specmod.parse("""
name: ctx
roles:
  r: {agent: "matrix_p2p_agents.dummy:Talker"}
routing: {type: cycle, roles: [r], max_turns: 1}
""", path="ctx.yaml")


class Counting:
    """A ChatClient whose n-th call costs 10 * n prompt and n completion tokens."""

    def __init__(self) -> None:
        self.calls = 0

    async def chat(self, messages: Sequence[Mapping[str, Any]], **params: Any) -> LLMResult:
        self.calls += 1
        return LLMResponse(text="a", prompt_tokens=10 * self.calls, completion_tokens=self.calls)


def _ctx(task: Task, llm: Counting | None = None) -> Context:
    return Context(task=task, role=SPEC.roles["r"], spec=SPEC, llm=llm or Counting(),
                   resource=SPEC.llm_for("r"), log=structlog.get_logger(), now=0.0)


def _task() -> Task:
    t = new_task(task_id="t1", workflow="ctx", role="r", row={}, now=0.0)
    t.turns.append(Turn(role="r", content="earlier"))
    return t


def _tokens(task: Task) -> tuple[int, int]:
    u = task.usage()
    return u.prompt_tokens, u.completion_tokens


async def test_calls_after_the_last_say_get_a_turn_of_their_own() -> None:
    task = _task()
    ctx = _ctx(task)
    await ctx.chat([])
    ctx.say("first")
    await ctx.chat([])
    await ctx.chat([])
    ctx.finish()
    assert [t.content for t in task.turns] == ["earlier", "first", ""]
    assert [t.llm_calls for t in task.turns] == [0, 1, 2]
    assert _tokens(task) == (10 + 20 + 30, 1 + 2 + 3)
    ctx.finish()  # nothing new: no empty turn
    assert len(task.turns) == 3


async def test_a_hops_turns_do_not_overlap_in_time() -> None:
    task = _task()
    ctx = _ctx(task)
    first, second = ctx.say("a"), ctx.say("b")
    assert first.started_at == 0.0  # the hop's start
    assert second.started_at == pytest.approx(first.started_at + first.elapsed_s, abs=1e-5)


async def test_spawn_refuses_turns_that_would_count_twice() -> None:
    task = _task()
    ctx = _ctx(task)
    mine, shared = ctx.say("mine"), ctx.say("shared")
    assert ctx.spawn({"i": 0}, turns=[mine]) == 0
    assert ctx.children == [{"state": {"i": 0}, "turns": [mine]}]
    with pytest.raises(TypeError, match="a turn given to a child twice"):
        ctx.spawn(turns=[mine])
    with pytest.raises(TypeError, match="a turn given to a child twice"):
        ctx.spawn(turns=[shared, shared])
    with pytest.raises(TypeError, match="a turn that this hop did not say"):
        ctx.spawn(turns=[task.turns[0]])  # the history: the parent's row counts it
    with pytest.raises(TypeError, match="a turn that this hop did not say"):
        ctx.spawn(turns=[Turn(role="r", content="shared")])  # equal, but not said here
    assert ctx.spawn(turns=[shared]) == 1


class ChatsThenFails(Agent):
    async def handle(self, task: Task, ctx: Context) -> None:
        await ctx.chat([])
        if task.row.get("bug"):
            task.row.nope()  # type: ignore[attr-defined]  # a bug in the agent
        raise FailTask("no good")


@pytest.mark.parametrize(("row", "outcome"), [({}, AgentFailed), ({"bug": True}, AgentBug)])
async def test_a_failed_task_keeps_the_tokens_its_last_hop_cost(
        row: dict[str, Any], outcome: type) -> None:
    """The task ends with the turns the agent left: the failed row holds every token."""
    worker = RoleWorker(bus=MemoryBus(), spec=SPEC, role=SPEC.roles["r"],
                        agent=ChatsThenFails(SPEC.roles["r"], SPEC), llm=Counting(),
                        concurrency=1, stats=WorkerStats())
    task = _task()
    task.row = row
    got = await worker._run_agent(task, [])
    assert isinstance(got, outcome)
    assert _tokens(task) == (10, 1) and task.turns[-1].llm_calls == 1
