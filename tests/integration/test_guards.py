"""One test per guard of the exactly-once promise, named after it.

Removing any one of these mechanisms makes its ``test_guard_<name>`` fail within
seconds (``make mutate`` removes them one at a time and shows which test caught it):

- ``publish_then_ack``: the worker acks its input only after the next hop's PubAck;
- ``msg_id_dedup``: a hop's publish carries msg-id ``<task>:<hop>``, so a republish
  after a crash is dropped by the broker (worker and source);
- ``sink_dedup``: the sink writes a task id once, across restarts;
- ``dead_letter_on_worker`` / ``dead_letter_on_sink``: garbage is kept on the
  dead-letter stream with its reason and termed, on every consumer;
- ``finished_envelopes_rejected``: a done or failed envelope never runs again;
- ``done_and_failed_subjects``: done and failed results go to their own subjects;
- ``retry_count`` / ``retry_spacing``: a hop runs at most ``max_deliveries`` times,
  with doubling delays;
- ``replica_that_refuses_ejected`` / ``replica_that_hangs_ejected``: the LLM client's
  breaker ejects a replica on connection errors and on timeouts;
- ``config_error_exit_2`` / ``config_error_in_task_group_exit_2``: a configuration
  error exits with status 2 and one line, also when raised inside a task group.

The step-by-step fault matrix on both buses is in ``test_hop_faults.py`` and
``test_edge_faults.py``; these run the sharpest case of each guard in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from matrix_p2p import envelope
from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.bus import MemoryBus
from matrix_p2p.llm import LLMClient
from matrix_p2p.runtime.hop import AgentRetry, DeadLetter, Hop, Nak, Publish
from matrix_p2p.runtime.sink import Sink
from matrix_p2p.runtime.source import submit
from matrix_p2p.runtime.topology import Names, ensure_workflow
from tests.conftest import make_spec
from tests.fault_rig import HOPS, Clock, Rig, crash_then_resume, setup, stored, worker
from tests.faults import Fault
from tests.integration.test_edge_faults import result, running_sink
from tests.integration.test_llm_client import MSGS, FakeOpenAI, cfg, hang
from tests.invariants import assert_file_once, wait_finished
from tests.procs import mx


@pytest.fixture
async def mem() -> AsyncIterator[Rig]:
    clock = Clock()
    r = Rig(MemoryBus(clock=clock), clock)
    yield r
    await r.bus.close()


async def test_guard_publish_then_ack(mem: Rig, tmp_path: Path) -> None:
    await crash_then_resume(mem, tmp_path, Fault(point="publish", hop=2),
                            "a crash after the agent ran, before its publish")


async def test_guard_msg_id_dedup(mem: Rig, tmp_path: Path) -> None:
    await crash_then_resume(mem, tmp_path, Fault(point="published", hop=2),
                            "a crash after the publish, before the PubAck")


async def test_guard_msg_id_dedup_at_the_source(mem: Rig, tmp_path: Path) -> None:
    spec, names, ids = await setup(mem, tmp_path)
    await submit(mem.bus, spec)  # nothing new: recorded
    for t in await stored(mem.bus, names.tasks_stream):  # as if the record had been lost
        await mem.bus.publish(names.task("a"), envelope.encode(t), msg_id=f"{t.id}:0")
    assert sorted(t.id for t in await stored(mem.bus, names.tasks_stream)) == ids


async def test_guard_sink_dedup(mem: Rig, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "roles: {a: {agent: 'matrix_p2p_agents.dummy:Talker', llm: null}}\n"
                               "routing: {type: cycle, roles: [a], max_turns: 1}\n")
    names = await ensure_workflow(mem.bus, spec)
    out = tmp_path / "out.jsonl"
    async with asyncio.timeout(5), running_sink(Sink(mem.bus, spec, out), expect=2):
        for tid in ("t1", "t1", "t2"):
            await mem.bus.publish(names.done, envelope.encode(result(spec, tid)))
    await mem.bus.publish(names.done, envelope.encode(result(spec, "t2")))  # after a restart
    await mem.bus.publish(names.done, envelope.encode(result(spec, "t3")))
    async with asyncio.timeout(5):
        await Sink(mem.bus, spec, out).run(asyncio.Event(), expect=3)
    assert_file_once(out, ["t1", "t2", "t3"], step="duplicate results before and after a restart")


async def test_guard_dead_letter_on_worker(mem: Rig, tmp_path: Path) -> None:
    spec, names, ids = await setup(mem, tmp_path)
    await mem.bus.publish(names.task("b"), b"\xc1garbage")
    async with worker(mem.faulty(), spec):
        await wait_finished(mem.bus, names, ids, step="garbage on role b", hops=HOPS, status="done")
    dead = [m async for m in mem.bus.iter_stream(names.dlq_stream)]
    assert [(m.data, m.headers["Mx-Subject"]) for m in dead] == [(b"\xc1garbage", names.task("b"))]
    assert dead[0].headers["Mx-Reason"].startswith("undecodable envelope (8 bytes)")


async def test_guard_dead_letter_on_sink(mem: Rig, tmp_path: Path) -> None:
    spec, names, ids = await setup(mem, tmp_path)
    await mem.bus.publish(names.done, b"\xc1garbage")
    out = tmp_path / "out.jsonl"
    async with worker(mem.faulty(), spec), asyncio.timeout(5):
        await Sink(mem.bus, spec, out).run(asyncio.Event(), expect=len(ids))
    assert_file_once(out, ids, step="garbage on the done subject")
    dead = [m async for m in mem.bus.iter_stream(names.dlq_stream)]
    assert [(m.data, m.headers["Mx-Subject"]) for m in dead] == [(b"\xc1garbage", names.done)]


async def test_guard_finished_envelopes_rejected(mem: Rig, tmp_path: Path) -> None:
    spec, names, ids = await setup(mem, tmp_path)
    hop = Hop(spec, spec.roles["a"], mem.bus.max_payload)
    async with worker(mem.faulty(), spec):
        results = await wait_finished(mem.bus, names, ids, step="the run", hops=HOPS)
        for t in results:
            assert isinstance(hop.arrive(envelope.encode(t), names.task("a"), 1, now=0.0), DeadLetter)
            await mem.bus.publish(names.task("a"), envelope.encode(t))
        await wait_finished(mem.bus, names, ids, step="finished envelopes put back on role a",
                            hops=HOPS, status="done")


FLAKY = """
source: {path: rows.jsonl}
roles:
  only: {agent: "matrix_p2p_agents.dummy:Flaky", llm: null, concurrency: 10}
routing: {type: cycle, roles: [only], stop_when: agreed, max_turns: 3}
limits: {ack_wait_s: 1, retry_backoff_s: 0.01, max_deliveries: 3}
"""


async def test_guard_done_and_failed_subjects(mem: Rig, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, FLAKY, [{"behaviour": "ok"}, {"behaviour": "fail"}])
    names = Names.of(spec)
    await submit(mem.bus, spec)
    ids = sorted(t.id for t in await stored(mem.bus, names.tasks_stream))
    async with worker(mem.faulty(), spec):
        await wait_finished(mem.bus, names, ids, step="one done, one failed")
    got = {(envelope.decode(m.data).status, m.subject)
           async for m in mem.bus.iter_stream(names.results_stream)}
    assert got == {("done", names.done), ("failed", names.failed)}


def _retry_hop(tmp_path: Path) -> Hop:
    spec = make_spec(tmp_path, FLAKY.replace("retry_backoff_s: 0.01", "retry_backoff_s: 0.5"), [])
    return Hop(spec, spec.roles["only"], 1 << 20)


def test_guard_retry_count(tmp_path: Path) -> None:
    hop = _retry_hop(tmp_path)
    t = envelope.new_task(task_id="t", workflow=hop.spec.name, role="only", row={})
    outcomes = [hop.after_agent(t, AgentRetry(reason="busy"), n, now=0.0) for n in (1, 2, 3)]
    assert [type(o).__name__ for o in outcomes] == ["Nak", "Nak", "Publish"]
    last = outcomes[-1]
    assert isinstance(last, Publish) and last.subject == hop.names.failed
    assert last.task.error == "busy (gave up after 3 deliveries)"
    # a delivery past the limit (a crash each time) ends the task without running it
    over = hop.arrive(envelope.encode(t), hop.names.task("only"), 4, now=0.0)
    assert isinstance(over, Publish) and over.outcome == "failed"


def test_guard_retry_spacing(tmp_path: Path) -> None:
    hop = _retry_hop(tmp_path)
    t = envelope.new_task(task_id="t", workflow=hop.spec.name, role="only", row={})
    naks = [hop.after_agent(t, AgentRetry(reason="busy"), n, now=0.0) for n in (1, 2)]
    assert naks == [Nak(after_s=0.5, reason="busy"), Nak(after_s=1.0, reason="busy")]
    asked = hop.after_agent(t, AgentRetry(reason="busy", after_s=7.0), 1, now=0.0)
    assert asked == Nak(after_s=7.0, reason="busy")  # the agent's own delay wins when longer


async def _ejected(server: FakeOpenAI, **kw: float) -> list[str]:
    """Events from two requests to ``server`` with a breaker that opens after two failures."""
    with capture_logs() as logs:
        async with LLMClient(cfg(server.url, breaker_failures=2, breaker_cooldown_s=60.0,
                                 max_retries=0, sticky=False, **kw)) as client:
            for _ in range(2):
                r = await client.chat(MSGS)
                assert not r.ok
            assert not next(iter(client.snapshot())).healthy, "the replica was not ejected"
    return [e["event"] for e in logs]


async def test_guard_replica_that_refuses_ejected() -> None:
    server = FakeOpenAI()
    await server.start()
    await server.stop()  # connection refused from now on
    assert "llm.endpoint_ejected" in await _ejected(server)


async def test_guard_replica_that_hangs_ejected() -> None:
    server = FakeOpenAI()
    await server.start()
    try:
        server.script.extend([hang(server), hang(server)])
        assert "llm.endpoint_ejected" in await _ejected(server, timeout_s=0.1)
    finally:
        server.release.set()
        await server.stop()


NO_SOURCE = """name: cfgerr
source: {path: nothing-*.jsonl}
roles: {a: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}}
routing: {type: cycle, roles: [a], max_turns: 1}
"""


def test_guard_config_error_exit_2(tmp_path: Path) -> None:
    wf = tmp_path / "bad.yaml"
    wf.write_text(NO_SOURCE.replace("max_turns: 1", "max_turns: lots"))
    r = mx("submit", str(wf), "--nats", "nats://127.0.0.1:1")
    assert (r.returncode, r.stderr.strip()) == (
        2, f"matrix_p2p: error: {wf}: routing.max_turns: Expected `int`, got `str`")


def test_guard_config_error_in_task_group_exit_2(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    """`submit` meets a CSV header without the id column inside its TaskGroup, `run`
    the agent that cannot be imported inside its own (the error arrives wrapped in a
    group). A missing source is found before `submit` connects."""
    wf = tmp_path / "cfgerr.yaml"
    wf.write_text(NO_SOURCE)
    r = mx("submit", str(wf), "--nats", nats_server.url, cwd=tmp_path)
    assert (r.returncode, r.stderr.strip()) == (
        2, f"matrix_p2p: error: {wf}: source.path: no file matches 'nothing-*.jsonl'")
    (tmp_path / "rows.csv").write_text("question\nq\n")
    wf.write_text(NO_SOURCE.replace("{path: nothing-*.jsonl}", "{path: rows.csv, id_field: id}"))
    r = mx("submit", str(wf), "--nats", nats_server.url, cwd=tmp_path)
    assert (r.returncode, r.stderr.strip()) == (
        2, f"matrix_p2p: error: {tmp_path / 'rows.csv'}:1: no 'id' column in the header row "
           "(source.id_field); its columns: question")
    (tmp_path / "rows.jsonl").write_text('{"n": 1}\n')
    wf.write_text(NO_SOURCE.replace("nothing-*.jsonl", "rows.jsonl")
                  .replace("matrix_p2p_agents.dummy:Talker", "no_such_module_here:Talker"))
    r = mx("run", str(wf), "--no-progress", cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"matrix_p2p: error: {wf}: "), last
    assert last.endswith("cannot import 'no_such_module_here': No module named 'no_such_module_here'")
    assert "Traceback" not in r.stderr
