"""Fan-out in the pure hop machine: child ids and msg-ids from the parent's id and the
child's index, routing as the parent's, the parent's end; properties over random
redeliveries (hypothesis)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from matrix_p2p import envelope
from matrix_p2p.envelope import Lease, Turn, new_task
from matrix_p2p.runtime.hop import AgentFailed, FanOut, Handled, Hop, Nak, Publish, spawn
from matrix_p2p.runtime.topology import hop_msg_id
from matrix_p2p.workflow import spec as specmod

WF = """
name: fan
roles:
  split: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
  answer: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
routing: {type: cycle, roles: [split, answer], max_turns: 2}
limits: {max_deliveries: 3}
"""
SPEC = specmod.parse(WF, path="fan.yaml")


def _parent(n_children: int) -> tuple[Hop, Any, list[dict[str, Any]]]:
    h = Hop(SPEC, SPEC.roles["split"], 1 << 20)
    t = new_task(task_id="doc-7-t0", workflow="fan", role="split", row={"text": "abc"}, now=0.0)
    t.leases = [Lease(kind="sandbox", ref="s1")]
    t.turns.append(Turn(role="split", content="split it"))
    t.state["kept"] = True
    kids = [{"state": {"i": i}} for i in range(n_children)]
    return h, t, kids


def test_children_are_published_first_then_the_parent_ends_with_their_count() -> None:
    h, t, kids = _parent(3)
    kids[2]["row"] = {"text": "other"}
    children = spawn(t, kids)
    action = h.after_agent(t, Handled(), 1, now=5.0, children=children)
    assert isinstance(action, FanOut)
    assert [(c.subject, c.msg_id, c.outcome) for c in action.children] == [
        ("mx.fan.task.answer", f"doc-7-t0/{i}:0", "forwarded") for i in range(3)]
    for i, c in enumerate(action.children):
        child = envelope.decode(c.data)
        assert child == c.task
        assert (child.id, child.parent, child.hop, child.role) == (
            f"doc-7-t0/{i}", "doc-7-t0", 0, "answer")
        assert child.state == {"kept": True, "i": i} and child.leases == [] and child.objects == []
        assert [x.role for x in child.turns] == ["split"]  # the history it grew from
    assert action.children[2].task.row == {"text": "other"}
    assert action.children[0].task.row == {"text": "abc"}
    p = action.parent
    assert (p.subject, p.msg_id, p.outcome) == ("mx.fan.done", "doc-7-t0:1", "done")
    assert p.task.state["children"] == 3 and p.task.state["stop_reason"] == "fanned out"
    assert p.task.leases == t.leases  # released by the worker when the parent ends


def test_a_failed_or_retried_hop_spawns_nothing() -> None:
    h, t, kids = _parent(2)
    failed = h.after_agent(t, AgentFailed(reason="no"), 1, now=5.0, children=spawn(t, kids))
    assert isinstance(failed, Publish) and failed.outcome == "failed"


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 6), crash_after=st.lists(st.integers(0, 7), min_size=1, max_size=6))
def test_redeliveries_never_create_an_extra_child(n: int, crash_after: list[int]) -> None:
    """The same hop delivered again and again (a crash after ``k`` publishes each time),
    with a deterministic agent spawning ``n`` children: the broker's msg-id dedup
    (modelled by a dict) keeps every child exactly once, and the parent once."""
    h, t, _ = _parent(0)
    data = envelope.encode(t)
    stored: dict[str, bytes] = {}  # msg-id -> first bytes published with it
    for k in [*crash_after, 99]:  # the last delivery runs to the ack
        task = envelope.decode(data)
        kids = [{"state": {"i": i}} for i in range(n)]
        action = h.after_agent(task, Handled(), 1, now=5.0, children=spawn(task, kids))
        pubs = [*action.children, action.parent] if isinstance(action, FanOut) else [action]
        assert not isinstance(action, Nak)
        for p in pubs[:k]:
            assert isinstance(p, Publish)
            stored.setdefault(p.msg_id, p.data)
    ids = sorted(envelope.decode(b).id for b in stored.values())
    expected = sorted(["doc-7-t0"] + [f"doc-7-t0/{i}" for i in range(n)])
    assert ids == expected
    for b in stored.values():
        task = envelope.decode(b)
        assert hop_msg_id(task.id, task.hop) in stored
