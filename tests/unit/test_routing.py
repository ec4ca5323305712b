from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matrix_p2p import envelope
from matrix_p2p.envelope import Task, Turn, new_task
from matrix_p2p.errors import ConfigError
from matrix_p2p.runtime import routing
from matrix_p2p.runtime.hop import (
    AgentFailed,
    AgentOutcome,
    AgentRetry,
    DeadLetter,
    Handled,
    Hop,
    Nak,
    RunAgent,
    advance,
)
from matrix_p2p.runtime.routing import Done, Failed, Forward
from matrix_p2p.workflow import spec

CYCLE = """
name: demo
roles:
  a: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
  b: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
  j: {agent: "matrix_p2p_agents.dummy:Decider", llm: null}
routing: {type: cycle, roles: [a, b, j], stop_when: agreed, max_turns: 6}
limits: {max_deliveries: 3, max_hops: 50}
"""


def wf(text: str = CYCLE) -> spec.WorkflowSpec:
    return spec.parse(text, path="wf.yaml")


def task(role: str = "a", turns: int = 0, **state: object) -> Task:
    t = new_task(task_id="t1", workflow="demo", role=role, row={}, now=0.0)
    t.turns = [Turn(role="x") for _ in range(turns)]
    t.state = dict(state)
    return t


def test_cycle_forwards_in_order_and_wraps() -> None:
    s = wf()
    assert routing.decide(task("a", 1), s) == Forward("b")
    assert routing.decide(task("b", 2), s) == Forward("j")
    assert routing.decide(task("j", 3), s) == Forward("a")


def test_stop_condition_ends_as_done() -> None:
    assert routing.decide(task("j", 3, agreed=True), wf()) == Done("agreed")


def test_max_turns_ends_as_done_by_default_and_failed_when_asked() -> None:
    assert routing.decide(task("j", 6), wf()) == Done("max_turns")
    s = wf(CYCLE.replace("max_turns: 6", "max_turns: 6, on_max_turns: failed"))
    assert routing.decide(task("j", 6), s) == Failed("no stop condition after 6 turns")


def test_max_hops_guards_runaway_tasks() -> None:
    t = task("a", 1)
    t.hop = 49
    assert routing.decide(t, wf()) == Failed("exceeded limits.max_hops=50")


def test_advance_builds_next_envelope_without_touching_input() -> None:
    t = task("a", 1)
    nxt = advance(t, Forward("b"), now=5.0)
    assert (nxt.role, nxt.hop, nxt.status) == ("b", 1, "running")
    assert (t.role, t.hop) == ("a", 0)
    done = advance(t, Done("agreed"), now=5.0)
    assert (done.status, done.finished_at, done.state["stop_reason"]) == ("done", 5.0, "agreed")
    failed = advance(t, Failed("boom"), now=6.0)
    assert (failed.status, failed.error) == ("failed", "boom")


class StateMachineRouter:
    def entry(self, s: spec.WorkflowSpec) -> str:
        return "a"

    def route(self, t: Task, s: spec.WorkflowSpec) -> routing.Decision:
        if t.state.get("verdict") == "reject":
            return Failed("rejected")
        return Done() if t.role == "j" else Forward("nowhere" if t.state.get("bad") else "j")


PY = CYCLE.replace("routing: {type: cycle, roles: [a, b, j], stop_when: agreed, max_turns: 6}",
                   "routing: {type: python, router: 'tests.unit.test_routing:StateMachineRouter'}")


def test_python_router() -> None:
    s = wf(PY)
    assert s.entry_role() == "a"
    assert routing.decide(task("a"), s) == Forward("j")
    assert routing.decide(task("j"), s) == Done()
    assert routing.decide(task("a", verdict="reject"), s) == Failed("rejected")


def test_python_router_choosing_unknown_role_fails_the_task() -> None:
    assert routing.decide(task("a", bad=True), wf(PY)) == Failed("router chose unknown role 'nowhere'")


def test_unimportable_router_is_a_config_error() -> None:
    s = wf(PY.replace("tests.unit.test_routing:StateMachineRouter", "no_such_mod:R"))
    with pytest.raises(ConfigError, match=r"wf.yaml: routing.router: cannot import 'no_such_mod'"):
        s.entry_role()


# ---- property: through the hop machine, every task ends exactly once ----
outcome = st.sampled_from(["ok", "ok", "ok", "agree", "retry", "fail", "crash_redeliver"])


@settings(max_examples=300, deadline=None)
@given(script=st.lists(outcome, min_size=1, max_size=60),
       max_turns=st.integers(1, 12), max_deliveries=st.integers(1, 4))
def test_every_task_reaches_exactly_one_terminal_state(
    script: list[str], max_turns: int, max_deliveries: int
) -> None:
    s = wf(CYCLE.replace("max_turns: 6", f"max_turns: {max_turns}")
           .replace("max_deliveries: 3", f"max_deliveries: {max_deliveries}"))
    data = envelope.encode(task("a"))
    deliveries = 0
    terminal: list[str] = []
    steps = iter(script * 50)  # long enough for any bound to bite
    for _ in range(5000):
        deliveries += 1
        role = envelope.decode(data).role
        h = Hop(s, s.roles[role], 1 << 20)
        action = h.arrive(data, "subject", deliveries, now=0.0)
        if isinstance(action, RunAgent):
            step = next(steps)
            if step == "crash_redeliver":
                continue  # the same envelope comes back
            t = action.task
            result: AgentOutcome = Handled()
            if step == "fail":
                result = AgentFailed("agent said so")
            elif step == "retry":
                result = AgentRetry("later")
            else:
                t.turns.append(Turn(role=t.role))
                if step == "agree":
                    t.state["agreed"] = True
            action = h.after_agent(t, result, deliveries, now=0.0)
        assert not isinstance(action, DeadLetter)
        if isinstance(action, Nak):
            continue
        data, deliveries = action.data, 0
        if action.ends_task:
            terminal.append(action.task.status)
            break
    assert len(terminal) == 1
    assert terminal[0] in ("done", "failed")
