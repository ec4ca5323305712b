"""The sandbox resource layer: spec validation, lease renewal, release on every path
a task can end by, server choice, trajectory restarts, and the tau and code_verify
agents' pure parts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from matrix_p2p_agents.code_verify import extract_code
from matrix_p2p_agents.tau.roles import assistant_view, user_view
from matrix_p2p_agents.tau.router import TauRouter
from matrix_p2p_agents.tau.tasks import load_tasks

from matrix_p2p import envelope
from matrix_p2p.bus import MemoryBus
from matrix_p2p.envelope import Lease, Task
from matrix_p2p.errors import ConfigError, FailTask
from matrix_p2p.resources.base import Resources
from matrix_p2p.resources.sandbox import SandboxPool, restart_trajectory
from matrix_p2p.runtime.topology import Names
from matrix_p2p.workflow import loader, spec
from matrix_p2p.workflow.spec import SandboxResource
from tests.conftest import make_spec
from tests.integration.helpers import read_rows, run_until
from tests.unit.lease_agents import FakeKind

BASE = """
name: s
roles:
  a: {agent: "m:A", llm: null, resources: [box]}
routing: {type: cycle, roles: [a]}
resources:
  sandbox:
    box: {pool: 2}
"""


def test_sandbox_resources_parse_and_the_bundled_workflows_are_valid() -> None:
    s = spec.parse(BASE, path="w.yaml")
    assert s.resources.sandbox["box"] == SandboxResource(pool=2)
    assert s.roles["a"].resources == ["box"]
    for name in ("tau", "code_verify"):
        assert loader.load(name).resources.sandbox


@pytest.mark.parametrize(("change", "message"), [
    (("resources: [box]", "resources: [bux]"),
     "w.yaml: roles.a.resources[0]: unknown resource 'bux' (known under resources.sandbox: box)"),
    (("{pool: 2}", "{pool: 0}"), "w.yaml: resources.sandbox.box.pool: must be at least 1"),
    (("{pool: 2}", "{ttl_s: -1}"), "w.yaml: resources.sandbox.box.ttl_s: must be positive"),
    (("{pool: 2}", "{max_restarts: -1}"),
     "w.yaml: resources.sandbox.box.max_restarts: must be at least 0"),
    (("{pool: 2}", "{pool: many}"),
     "w.yaml: resources.sandbox.box.pool: Expected `int`, got `str`"),
    (("{pool: 2}", "{image: x}"),
     "w.yaml: resources.sandbox.box: Object contains unknown field `image`"),
])
def test_bad_sandbox_resources_get_one_line(change: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        spec.parse(BASE.replace(*change), path="w.yaml")
    assert str(err.value) == message


async def test_a_lease_near_its_expiry_is_renewed_when_used_and_kept_otherwise() -> None:
    kind = FakeKind()
    res = Resources({"box": kind}, clock=lambda: kind.now)
    task = Task(id="t", workflow="w", role="a")
    first = await res.lease(task, "box")
    assert first.kind == "box" and kind.acquired == ["t"]
    assert await res.lease(task, "box") is first and kind.renewed == []
    kind.now += 95.0  # 5 s left, under the 10 s margin
    renewed = await res.lease(task, "box")
    assert kind.renewed == [first.ref] and renewed.expires_at == kind.now + 100.0
    assert task.leases == [renewed] and renewed.kind == "box"


def test_servers_are_chosen_by_fewest_leases_then_round_robin() -> None:
    pool = SandboxPool("box", ["http://a", "http://b", "http://c"], SandboxResource())
    firsts = {pool.order()[0] for _ in range(3)}
    assert firsts == {"http://a", "http://b", "http://c"}  # ties rotate
    pool.held.update({"http://a": 2, "http://b": 0, "http://c": 1})
    assert pool.order() == ["http://b", "http://c", "http://a"]
    with pytest.raises(ConfigError, match=r"^resources.sandbox.box: no sandbox server"):
        SandboxPool("box", [], SandboxResource())


class _Ctx:
    def __init__(self, s: spec.WorkflowSpec, res: Resources) -> None:
        import structlog

        self.spec, self.resources, self.log = s, res, structlog.get_logger()


def test_a_lost_sandbox_restarts_the_trajectory_up_to_the_limit_then_fails() -> None:
    s = spec.parse(BASE.replace("{pool: 2}", "{max_restarts: 1}"), path="w.yaml")
    res = Resources({"box": FakeKind()})
    task = Task(id="t", workflow="s", role="a", leases=[Lease(kind="box", ref="L1")])
    assert restart_trajectory(task, _Ctx(s, res), "box", "gone") == 1  # type: ignore[arg-type]
    assert task.leases == [] and task.state["sandbox_restarts"] == 1
    with pytest.raises(FailTask,
                       match=r"^sandbox lost 2 times \(resources.sandbox.box.max_restarts=1\): gone$"):
        restart_trajectory(task, _Ctx(s, res), "box", "gone")  # type: ignore[arg-type]


LEASE_YAML = """
source: {path: rows.jsonl, id_field: id}
roles:
  a: {agent: "tests.unit.lease_agents:TakeLease", llm: null, resources: [box]}
  b: {agent: "tests.unit.lease_agents:TakeLease", llm: null, resources: [box]}
routing: {type: cycle, roles: [a, b], stop_when: agreed, max_turns: 10}
resources: {sandbox: {box: {}}}
limits: {ack_wait_s: 5, retry_backoff_s: 0.01, max_deliveries: 2}
"""


async def test_the_worker_releases_leases_on_every_ending(tmp_path: Path) -> None:
    rows = [{"id": b, "behaviour": b} for b in ("done", "forward", "fail", "retry_always", "crash")]
    s = make_spec(tmp_path, LEASE_YAML, rows)
    kind = FakeKind()
    bus = MemoryBus()
    try:
        _, stats, _ = await run_until(bus, s, tmp_path / "out.jsonl", expect=len(rows),
                                         resources=Resources({"box": kind}))
        # a misrouted envelope holding a lease is dead-lettered: its lease is released too
        stray = Task(id="stray", workflow="other", role="a",
                     leases=[Lease(kind="box", ref="L-stray")])
        stop = asyncio.Event()
        released = asyncio.Event()
        original = kind.release

        async def release(lease: Lease) -> None:
            await original(lease)
            if lease.ref == "L-stray":
                released.set()

        kind.release = release  # type: ignore[method-assign]
        from matrix_p2p.runtime.serve import serve_roles

        async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
            tg.create_task(serve_roles(bus, s, ["a"], llm_for={}, stop=stop,
                                       resources=Resources({"box": kind})))
            await bus.publish(Names.of(s).task("a"), envelope.encode(stray), msg_id="stray:0")
            await released.wait()
            stop.set()
    finally:
        await bus.close()
    ended = {r["id"]: r["status"] for r in read_rows(tmp_path / "out.jsonl")}
    assert {r["input"]["behaviour"]: r["status"] for r in read_rows(tmp_path / "out.jsonl")} == {
        "done": "done", "forward": "done", "fail": "failed", "retry_always": "failed",
        "crash": "failed"}
    assert len(ended) == len(rows) and stats.done + stats.failed == len(rows)
    # one lease per task, whatever the ending, released exactly once
    assert sorted(kind.released) == sorted([f"L-{t}" for t in kind.acquired] + ["L-stray"])
    assert len(set(kind.acquired)) == len(rows)


def test_out_of_deliveries_ends_the_task_with_its_leases_for_release() -> None:
    from matrix_p2p.runtime.hop import Hop, Publish

    s = spec.parse(LEASE_YAML.replace("source: {path: rows.jsonl, id_field: id}\n", "")
                   .replace("roles:", "name: s\nroles:", 1), path="w.yaml")
    hop = Hop(s, s.roles["a"], 1 << 20)
    task = Task(id="t", workflow="s", role="a", leases=[Lease(kind="box", ref="L")])
    action = hop.arrive(envelope.encode(task), "mx.s.task.a", num_delivered=3, now=0.0)
    # the worker releases ``task.leases`` of every publish that ends the task
    assert isinstance(action, Publish) and action.ends_task and action.outcome == "failed"
    assert action.task.leases == task.leases


def test_tau_router_and_views() -> None:
    s = loader.load("tau")
    router = TauRouter()
    assert router.entry(s) == "user"
    t = Task(id="t", workflow="tau", role="user")
    assert router.route(t, s).role == "assistant"  # type: ignore[union-attr]
    t.role = "assistant"
    assert router.route(t, s).role == "user"  # type: ignore[union-attr]
    t.state["termination"] = "max_errors"
    assert router.route(t, s).role == "reward"  # type: ignore[union-attr]
    t.role = "reward"
    assert router.route(t, s).role == "user"  # type: ignore[union-attr]  # restarted: no reward
    t.state["reward"] = 1.0
    assert router.route(t, s).reason == "max_errors"  # type: ignore[union-attr]

    scenario = load_tasks()[0]
    t.turns = [
        envelope.Turn(role="user", content="hi, cancel #W1"),
        envelope.Turn(role="assistant", content="", meta={"tool_calls": [
            {"id": "c1", "name": "get_order_details", "arguments": "{}"}]}),
        envelope.Turn(role="tool", content="Error: x", meta={"tool_call_id": "c1"}),
        envelope.Turn(role="assistant", content="done"),
    ]
    a = assistant_view(t)
    assert [m["role"] for m in a] == ["system", "assistant", "user", "assistant", "tool", "assistant"]
    assert a[3]["tool_calls"][0]["function"]["name"] == "get_order_details"
    assert a[4] == {"role": "tool", "tool_call_id": "c1", "content": "Error: x"}
    u = user_view(t, scenario)
    assert [m["role"] for m in u] == ["system", "user", "assistant", "user"]
    assert u[-1]["content"] == "done" and "###USER-SIMULATOR###" in u[0]["content"]


def test_code_is_taken_from_the_last_fenced_block() -> None:
    assert extract_code("x\n```python\ndef f():\n    return 1\n```\n") == "def f():\n    return 1\n"
    assert extract_code("no fence") == "no fence\n"
