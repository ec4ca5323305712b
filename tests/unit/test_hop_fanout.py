"""Fan-out in the pure hop machine: child ids and msg-ids from the parent's id and the
child's index, routing as the parent's, the parent's end; properties over random
redeliveries and over random splits of a hop's turns between its children (each token
in one row; hypothesis)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from matrix_p2p import envelope
from matrix_p2p.envelope import Lease, Turn, Usage, new_task
from matrix_p2p.runtime.hop import AgentFailed, FanOut, Handled, Hop, Nak, Publish, spawn
from matrix_p2p.runtime.replay import replayed_task
from matrix_p2p.runtime.sink import to_row
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
        assert child.state == {"kept": True, "i": i,
                               "spawn": {"index": i, "from_turn": 1, "from_hop": 0}}
        assert child.leases == [] and child.objects == []
        assert [x.role for x in child.turns] == ["split"]  # the history it grew from
    assert action.children[2].task.row == {"text": "other"}
    assert action.children[0].task.row == {"text": "abc"}
    p = action.parent
    assert (p.subject, p.msg_id, p.outcome) == ("mx.fan.done", "doc-7-t0:1", "done")
    # not a kept row itself: its children are
    assert p.task.state == {"children": 3, "stop_reason": "fanned out"}
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


def _usage(t: Any) -> tuple[int, int]:
    return t["usage"]["total"]["prompt_tokens"], t["usage"]["total"]["completion_tokens"]


@settings(max_examples=200, deadline=None)
@given(history=st.integers(0, 3), owners=st.lists(st.integers(-1, 3), min_size=1, max_size=8),
       n=st.integers(1, 4), replayed=st.booleans())
def test_each_token_is_counted_in_one_row_and_a_child_holds_no_sibling_turn(
        history: int, owners: list[int], n: int, replayed: bool) -> None:
    """A spawning hop says turns (each owned by child ``owners[j]``, or by nobody: -1,
    the hop's shared work) after ``history`` earlier turns. Over the rows of the parent
    and its children, usage, hops and time per role sum to what the hop machine was given,
    once each; a child's dialogue is the parent's history, then its own turns, in order;
    the parent's holds none of its children's. (A replayed parent: its original's turns
    are in the original's row.)"""
    h, t, _ = _parent(0)
    t.turns = [Turn(role="old", usage=Usage(prompt_tokens=1000 + j, completion_tokens=1),
                    elapsed_s=1.0) for j in range(history)]
    t.hop = 3
    if replayed:
        t.state["replay"] = {"generation": 1, "of": "doc-7", "role": "split",
                             "from_turn": history, "from_hop": 2}
    said = [Turn(role="split", content=f"s{j}", elapsed_s=0.5,
                 usage=Usage(prompt_tokens=10 * (j + 1), completion_tokens=j + 1))
            for j in range(len(owners))]
    t.turns.extend(said)
    kids = [{"state": {"i": i}, "turns": [s for s, o in zip(said, owners, strict=True) if o == i]}
            for i in range(n)]
    action = h.after_agent(t, Handled(), 1, now=5.0, children=spawn(t, kids))
    assert isinstance(action, FanOut)
    tasks = [action.parent.task, *(c.task for c in action.children)]
    rows = [to_row(envelope.decode(envelope.encode(x))) for x in tasks]  # as published
    counted = t.turns[history if replayed else 0:]
    assert tuple(map(sum, zip(*map(_usage, rows), strict=True))) == (
        sum(x.usage.prompt_tokens for x in counted), sum(x.usage.completion_tokens for x in counted))
    assert sum(r["hops"] for r in rows) == (4 - 2 if replayed else 4)  # the spawning hop: once
    by_role = [sum(r["timings"]["by_role"].values()) for r in rows]
    assert sum(by_role) == sum(x.elapsed_s for x in counted)
    shared = [f"s{j}" for j, o in enumerate(owners) if not 0 <= o < n]
    history_contents = [""] * history
    assert [d["content"] for d in rows[0]["dialogue"]] == history_contents + shared
    assert "kept" not in rows[0]["result"] and rows[0]["children"] == n
    for i, row in enumerate(rows[1:]):
        assert [d["content"] for d in row["dialogue"]] == history_contents + shared + [
            f"s{j}" for j, o in enumerate(owners) if o == i]
        assert row["result"]["spawn"]["index"] == i and "replay" not in row["result"]


def test_a_replay_of_a_child_counts_only_what_the_replay_added() -> None:
    _, t, _ = _parent(0)
    mine = Turn(role="split", content="mine", usage=Usage(prompt_tokens=5, completion_tokens=5))
    t.turns.append(mine)
    child = spawn(t, [{"turns": [mine]}])[0]
    child.turns.append(Turn(role="answer", usage=Usage(prompt_tokens=3, completion_tokens=2)))
    child.hop, child.status, child.finished_at = 1, "done", 6.0
    assert _usage(to_row(child)) == (8, 7) and to_row(child)["hops"] == 1
    again = replayed_task(child, target=SPEC, role="answer", generation=1)
    again.turns.append(Turn(role="answer", usage=Usage(prompt_tokens=1, completion_tokens=1)))
    again.hop, again.status = 2, "done"
    assert _usage(to_row(again)) == (1, 1) and to_row(again)["hops"] == 1
