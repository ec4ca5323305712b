"""Tasks flow peer to peer through a real nats-server: worker, source, sink."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import msgspec
import structlog

from matrix_p2p import envelope
from matrix_p2p.bus import Bus
from matrix_p2p.runtime.source import submit
from matrix_p2p.runtime.topology import Names
from tests.conftest import DUMMY_YAML, make_spec
from tests.integration.helpers import read_rows, run_until


async def test_every_task_ends_exactly_once(any_bus: Bus, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, DUMMY_YAML, [{"n": i} for i in range(300)])
    out = tmp_path / "out.jsonl"
    _, stats, sub = await run_until(any_bus, spec, out, expect=300)
    rows = read_rows(out)
    ids = Counter(r["id"] for r in rows)
    assert len(ids) == 300 and max(ids.values()) == 1
    assert {r["status"] for r in rows} == {"done"}
    assert sub.submitted == 300
    # the decider's long tail: some tasks took several rounds, each round three turns
    assert max(len(r["dialogue"]) for r in rows) > 3
    assert all(len(r["dialogue"]) % 3 == 0 for r in rows)
    assert stats.done == 300 and stats.dead_lettered == 0


async def test_submitting_twice_creates_nothing_new(any_bus: Bus, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, DUMMY_YAML, [{"n": i} for i in range(20)])
    first = await submit(any_bus, spec)
    second = await submit(any_bus, spec)
    assert (first.submitted, second.submitted, second.already) == (20, 0, 20)
    assert await any_bus.stream_msgs(Names.of(spec).tasks_stream) == 20


async def test_bad_rows_become_failed_tasks_not_silence(any_bus: Bus, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, DUMMY_YAML)
    (tmp_path / "rows.jsonl").write_text('{"n": 1}\nnot json\n[1, 2]\n{"n": 2}\n')
    out = tmp_path / "out.jsonl"
    await run_until(any_bus, spec, out, expect=4)
    rows = {r["row_index"]: r for r in read_rows(out)}
    assert rows[0]["status"] == rows[3]["status"] == "done"  # row_index counts from 0
    assert rows[1]["status"] == "failed"
    assert rows[1]["error"].startswith("bad input row: ")
    assert "rows.jsonl:2: not valid JSON" in rows[1]["error"]  # messages name the line
    assert "rows.jsonl:3: expected a JSON object, got list" in rows[2]["error"]


FLAKY_YAML = """
source: {path: rows.jsonl}
roles:
  only: {agent: "matrix_p2p_agents.dummy:Flaky", llm: null, concurrency: 50}
routing: {type: cycle, roles: [only], stop_when: agreed, max_turns: 3}
limits: {ack_wait_s: 5, retry_backoff_s: 0.02, max_deliveries: 3}
"""


async def test_agent_errors_end_as_failed_with_their_reason(any_bus: Bus, tmp_path: Path) -> None:
    rows = [{"behaviour": b} for b in ("ok", "fail", "retry_always", "crash")]
    spec = make_spec(tmp_path, FLAKY_YAML, rows)
    out = tmp_path / "out.jsonl"
    with structlog.testing.capture_logs() as logs:
        await run_until(any_bus, spec, out, expect=4)
    by = {r["input"]["behaviour"]: r for r in read_rows(out)}
    assert by["ok"]["status"] == "done"
    assert by["fail"]["error"] == "row asked to fail"
    assert by["retry_always"]["error"] == "row asked to retry (gave up after 3 deliveries)"
    assert by["crash"]["error"] == (
        "agent raised RuntimeError: row asked to crash (gave up after 3 deliveries)")
    events = Counter(e["event"] for e in logs)
    assert events["worker.retry"] == 4  # two retries each for the two that gave up
    assert events["agent.crashed"] == 3


async def test_garbage_on_a_role_subject_is_dead_lettered(any_bus: Bus, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, DUMMY_YAML, [{"n": i} for i in range(10)])
    names = Names.of(spec)
    from matrix_p2p.runtime.topology import ensure_workflow

    await ensure_workflow(any_bus, spec)
    wrong_shape = msgspec.msgpack.encode({"id": 5, "workflow": spec.name})
    other_wf = envelope.encode(envelope.new_task(task_id="x", workflow="other", role="teacher",
                                                 row={}))
    wrong_role = envelope.encode(envelope.new_task(task_id="y", workflow=spec.name,
                                                   role="judge", row={}))
    for data in (b"\xc1\xffgarbage", wrong_shape, other_wf, wrong_role):
        await any_bus.publish(names.task("teacher"), data)
    out = tmp_path / "out.jsonl"
    _, stats, _ = await run_until(any_bus, spec, out, expect=10)
    assert len(read_rows(out)) == 10
    assert stats.dead_lettered == 4
    first, last = await any_bus.stream_bounds(names.dlq_stream)
    reasons = []
    for seq in range(first, last + 1):
        got = await any_bus.stored(names.dlq_stream, seq)
        assert got is not None
        reasons.append(got.headers["Mx-Reason"])
        assert got.headers["Mx-Subject"] == names.task("teacher")
    assert reasons[0].startswith("undecodable envelope (9 bytes): MessagePack data is malformed")
    assert reasons[1] == "invalid envelope: Expected `str`, got `int` - at `$.id`"
    assert "workflow 'other'" in reasons[2]
    assert "role 'judge' arrived on" in reasons[3]
    # the original bytes are kept
    got = await any_bus.stored(names.dlq_stream, first)
    assert got is not None and got.data == b"\xc1\xffgarbage"


async def test_status_shows_tasks_no_role_serves(bus: Bus, tmp_path: Path) -> None:
    from matrix_p2p.runtime.status import render_status, workflow_status
    from matrix_p2p.runtime.topology import ensure_workflow

    spec = make_spec(tmp_path, DUMMY_YAML, [{"n": 1}])
    names = Names.of(spec)
    await ensure_workflow(bus, spec)
    ghost = envelope.new_task(task_id="g", workflow=spec.name, role="ghost", row={})
    await bus.publish(names.task("ghost"), envelope.encode(ghost))
    await submit(bus, spec)
    st = await workflow_status(bus, spec)
    assert st.unserved == {names.task("ghost"): 1}
    assert st.live_tasks == 2
    assert f"warning: 1 tasks on {names.task('ghost')}, which no role" in render_status(st)


SLOW_YAML = """
source: {path: rows.jsonl}
roles:
  only: {agent: "matrix_p2p_agents.dummy:Flaky", llm: null, concurrency: 50, hop_timeout_s: 0.2}
routing: {type: cycle, roles: [only], stop_when: agreed, max_turns: 3}
limits: {ack_wait_s: 5, retry_backoff_s: 0.02, max_deliveries: 2}
"""


async def test_a_hop_past_its_timeout_is_retried_then_fails(any_bus: Bus, tmp_path: Path) -> None:
    """The hop timeout (one timer per second for a role's hops, issue 19): an agent that
    runs past ``hop_timeout_s`` is cancelled and its hop retried, up to ``max_deliveries``;
    the other tasks are not held by it."""
    rows = [{"behaviour": "slow", "seconds": 60}, {"behaviour": "ok"}]
    spec = make_spec(tmp_path, SLOW_YAML, rows)
    out = tmp_path / "out.jsonl"
    with structlog.testing.capture_logs() as logs:
        await run_until(any_bus, spec, out, expect=2, deadline_s=15)
    by = {r["input"]["behaviour"]: r for r in read_rows(out)}
    assert by["ok"]["status"] == "done"
    assert by["slow"]["error"] == "role 'only' timed out after 0.2s (gave up after 2 deliveries)"
    assert [e["reason"] for e in logs if e["event"] == "worker.retry"] == [
        "role 'only' timed out after 0.2s"]
