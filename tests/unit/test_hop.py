"""The pure hop machine: exact decisions, and properties over random runs (hypothesis)."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from matrix_p2p import envelope
from matrix_p2p.envelope import Lease, Task, Turn, new_task
from matrix_p2p.runtime.hop import (
    AgentBug,
    AgentFailed,
    AgentOutcome,
    AgentRetry,
    DeadLetter,
    Handled,
    Hop,
    Nak,
    Publish,
    RunAgent,
    classify,
    retry_delay,
)
from matrix_p2p.workflow import spec as specmod

WF = """
name: demo
roles:
  a: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
  b: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
routing: {type: cycle, roles: [a, b], stop_when: agreed, max_turns: 6}
limits: {max_deliveries: 3, max_hops: 50, retry_backoff_s: 1.0}
"""
SPEC = specmod.parse(WF, path="wf.yaml")
MAX_PAYLOAD = 1 << 20


def hop_for(role: str, max_payload: int = MAX_PAYLOAD) -> Hop:
    return Hop(SPEC, SPEC.roles[role], max_payload)


def fresh(role: str = "a") -> Task:
    return new_task(task_id="t1", workflow="demo", role=role, row={"q": 1}, now=0.0)


def test_garbage_is_dead_lettered_with_the_decode_error() -> None:
    action = hop_for("a").arrive(b"\xc1garbage", "mx.demo.task.a", 1, now=1.0)
    assert isinstance(action, DeadLetter)
    assert action.reason.startswith("undecodable envelope (8 bytes)")
    assert action.task_id is None


def test_misrouted_envelope_is_dead_lettered_and_its_leases_released() -> None:
    t = fresh("b")
    t.leases = [Lease(kind="sandbox", ref="s1")]
    action = hop_for("a").arrive(envelope.encode(t), "mx.demo.task.a", 1, now=1.0)
    assert action == DeadLetter(
        reason="envelope for workflow 'demo' role 'b' arrived on mx.demo.task.a "
               "(workflow 'demo' role 'a')", task_id="t1", leases=t.leases)


def test_finished_envelope_never_runs_again() -> None:
    t = fresh()
    t.status = "done"
    action = hop_for("a").arrive(envelope.encode(t), "mx.demo.task.a", 1, now=1.0)
    assert action == DeadLetter(reason="task t1 is already done", task_id="t1")


def test_delivered_too_often_ends_as_failed() -> None:
    action = hop_for("a").arrive(envelope.encode(fresh()), "mx.demo.task.a", 4, now=2.0)
    assert isinstance(action, Publish)
    assert action.subject == "mx.demo.failed"
    assert action.task.error == "role 'a' failed to finish hop 0 after 3 deliveries"
    assert action.msg_id == "t1:1"


def test_handled_forwards_to_the_next_role_with_the_hop_msg_id() -> None:
    h = hop_for("a")
    run = h.arrive(envelope.encode(fresh()), "mx.demo.task.a", 1, now=1.0)
    assert isinstance(run, RunAgent)
    run.task.turns.append(Turn(role="a", content="hi"))
    action = h.after_agent(run.task, Handled(), 1, now=2.0)
    assert isinstance(action, Publish)
    assert (action.subject, action.msg_id, action.outcome) == ("mx.demo.task.b", "t1:1", "forwarded")
    assert envelope.decode(action.data) == action.task
    assert action.task.role == "b" and action.task.hop == 1


def test_retry_naks_with_growing_delay_then_gives_up() -> None:
    h, t = hop_for("a"), fresh()
    first = h.after_agent(t, AgentRetry(reason="llm busy"), 1, now=1.0)
    second = h.after_agent(t, AgentRetry(reason="llm busy"), 2, now=1.0)
    asked = h.after_agent(t, AgentRetry(reason="llm busy", after_s=30.0), 1, now=1.0)
    assert first == Nak(after_s=1.0, reason="llm busy")
    assert second == Nak(after_s=2.0, reason="llm busy")
    assert asked == Nak(after_s=30.0, reason="llm busy")  # the agent's own delay wins
    last = h.after_agent(t, AgentRetry(reason="llm busy"), 3, now=1.0)
    assert isinstance(last, Publish) and last.outcome == "failed"
    assert last.task.error == "llm busy (gave up after 3 deliveries)"


def test_failed_outcome_ends_the_task_as_failed() -> None:
    action = hop_for("a").after_agent(fresh(), AgentFailed(reason="no answer"), 1, now=3.0)
    assert isinstance(action, Publish)
    assert (action.subject, action.task.status, action.task.error) == (
        "mx.demo.failed", "failed", "no answer")
    assert action.task.finished_at == 3.0 and action.ends_task


def test_stop_condition_ends_as_done() -> None:
    t = fresh()
    t.state["agreed"] = True
    action = hop_for("a").after_agent(t, Handled(), 1, now=3.0)
    assert isinstance(action, Publish) and action.subject == "mx.demo.done"
    assert action.task.state["stop_reason"] == "agreed"


def test_oversized_envelope_fails_in_an_envelope_that_fits() -> None:
    h = hop_for("a", max_payload=64 * 1024)
    t = fresh()
    t.turns.append(Turn(role="a", content="x" * 100_000))
    action = h.after_agent(t, Handled(), 1, now=3.0)
    assert isinstance(action, Publish) and action.subject == "mx.demo.failed"
    assert len(action.data) < 64 * 1024
    assert action.task.error is not None
    assert "exceeds the broker's max_payload of 65536 bytes" in action.task.error


def test_retry_delay_doubles_and_caps() -> None:
    assert [retry_delay(n, 1.0, cap_s=5) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 5, 5]


# ---------------------------------------------------------------- properties
outcomes = st.one_of(
    st.just(Handled()),
    st.builds(AgentRetry, reason=st.just("transient"), after_s=st.floats(0, 5)),
    st.builds(AgentFailed, reason=st.just("bad")),
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(outcomes, st.booleans(), st.booleans()), min_size=1, max_size=80))
def test_every_task_ends_exactly_once(steps: list[tuple[AgentOutcome, bool, bool]]) -> None:
    """Drive one task through random agent outcomes, stop flags and crashes (a crash
    delivers the same message again). Invariants: hops grow by one per publish, each
    publish's msg-id is `<id>:<hop>`, a nak never comes at the last allowed delivery,
    and once a terminal envelope is published the task is over: its bytes arriving
    anywhere again are dead-lettered, never run."""
    data = envelope.encode(fresh())
    delivered = 1
    hop_no = 0
    terminal: Publish | None = None
    for outcome, agreed, crash in steps:
        task = envelope.decode(data)
        h = hop_for(task.role)
        first = h.arrive(data, f"mx.demo.task.{task.role}", delivered, now=1.0)
        if isinstance(first, RunAgent):
            if agreed:
                first.task.state["agreed"] = True
            first.task.turns.append(Turn(role=task.role))
            action = h.after_agent(first.task, outcome, delivered, now=2.0)
        else:
            action = first
        assert not isinstance(action, DeadLetter)
        if isinstance(action, Nak):
            assert delivered < SPEC.limits.max_deliveries
            delivered += 1
            continue
        assert isinstance(action, Publish)
        assert action.task.hop == hop_no + 1
        assert action.msg_id == f"t1:{action.task.hop}"
        if crash:
            # the publish happened, the ack did not: the same input comes again and
            # makes the same publish (same msg-id: the broker drops it)
            again = h.arrive(data, f"mx.demo.task.{task.role}", delivered + 1, now=1.0)
            if isinstance(again, Publish):
                assert again.msg_id == action.msg_id
        hop_no += 1
        if action.ends_task:
            terminal = action
            break
        data, delivered = action.data, 1
    if terminal is not None:
        assert terminal.task.status in ("done", "failed")
        for role in SPEC.roles:
            stale = msgspec.structs.replace(terminal.task, role=role)
            assert isinstance(hop_for(role).arrive(envelope.encode(stale), "s", 1, now=9.0),
                              DeadLetter)


def test_a_bug_in_agent_code_fails_the_task_at_once() -> None:
    outcome = classify(AttributeError("'dict' object has no attribute 'x'"), "a")
    assert outcome == AgentBug(
        reason="bug in agent 'a' raised AttributeError: 'dict' object has no attribute 'x'")
    action = hop_for("a").after_agent(fresh(), outcome, 1, now=2.0)
    assert isinstance(action, Publish) and action.outcome == "failed"
    assert action.task.error == outcome.reason


def test_transient_errors_are_retried_and_bugs_are_not() -> None:
    for exc in (KeyError("k"), TypeError("t"), NameError("n"), ImportError("i"),
                AssertionError(), IndexError("i"), ZeroDivisionError("z")):
        assert isinstance(classify(exc, "a"), AgentBug), exc
    for exc2 in (RuntimeError("r"), OSError("o"), ConnectionResetError(), ValueError("v")):
        outcome = classify(exc2, "a")
        assert isinstance(outcome, AgentRetry), exc2
        assert isinstance(hop_for("a").after_agent(fresh(), outcome, 1, now=2.0), Nak)
