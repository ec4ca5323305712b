"""Guards of fan-out (``make mutate`` breaks each):

- ``fan_out_children_published_before_the_parent_ends``: the worker publishes every
  child before the parent's end (a crash in between redoes them all; the parent's end is
  the last word of its hop);
- ``fan_out_run_waits_for_every_child``: ``run`` is not finished when the parent's row is
  written: its children are part of the run. Interrupted then, it says so (exit 130),
  and the next ``run`` resumes and writes every child.

The second test goes through ``run_workflow`` on the session's nats-server (not through
``Sink.finished``, whose shape is the sink's own business).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.bus import ConnectOptions, MemoryBus
from matrix_p2p.runtime.files import RowWriter
from matrix_p2p.runtime.local_run import RunOptions, run_workflow
from matrix_p2p.runtime.source import submit
from matrix_p2p.runtime.topology import Names
from tests.conftest import make_spec
from tests.fault_rig import Clock, Rig, stored, worker
from tests.guard_agents import hold
from tests.integration.helpers import read_rows
from tests.invariants import wait_finished

FAN = """
source: {path: rows.jsonl, id_field: id}
roles:
  split: {agent: "tests.guard_agents:Split", llm: null, options: {children: 3}}
  answer: {agent: "tests.guard_agents:Held", llm: null}
routing: {type: cycle, roles: [split, answer], max_turns: 2}
limits: {ack_wait_s: 5, retry_backoff_s: 0.05}
"""


@pytest.fixture
async def mem() -> AsyncIterator[Rig]:
    clock = Clock()
    r = Rig(MemoryBus(clock=clock), clock)
    yield r
    await r.bus.close()


async def test_guard_fan_out_children_published_before_the_parent_ends(
        mem: Rig, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, FAN, [{"id": "doc"}, {"id": "page"}])
    await submit(mem.bus, spec)
    names = Names.of(spec)
    parents = sorted(t.id for t in await stored(mem.bus, names.tasks_stream))
    children = [f"{p}/{i}" for p in parents for i in range(3)]
    faulty = mem.faulty()
    async with worker(faulty, spec):
        await wait_finished(mem.bus, names, parents + children, step="a fan-out", status="done",
                            trace=mem.trace)
    steps = faulty.order("published")
    for p in parents:
        end = steps.index(f"published {p}")  # the parent's only publish: its end
        late = [c for c in children if c.startswith(p + "/") and steps.index(f"published {c}") > end]
        assert not late, f"{p} ended before its children {late} were published: {steps}"


async def test_guard_fan_out_run_waits_for_every_child(
        tmp_path: Path, nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(tmp_path, FAN, [{"id": "doc"}])
    out = tmp_path / "out.jsonl"
    gate, inside = hold(spec.name)  # the children wait before their last hop
    parent_written = asyncio.Event()
    commit = RowWriter.commit

    def committed(self: RowWriter) -> None:
        commit(self)
        if self.path == out and b'"children":3' in out.read_bytes():
            parent_written.set()

    monkeypatch.setattr(RowWriter, "commit", committed)
    opts = RunOptions(nats=ConnectOptions(url=nats_server.url, name="guard-fanout"),
                      out=str(out), progress=False, drain_timeout_s=0.2)
    stop = asyncio.Event()
    run = asyncio.create_task(run_workflow(spec, opts, stop))
    written = asyncio.create_task(parent_written.wait())
    async with asyncio.timeout(20):
        await asyncio.wait({run, written}, return_when=asyncio.FIRST_COMPLETED)
    written.cancel()
    stop.set()  # Ctrl-C with the parent's row durable and its children unwritten
    async with asyncio.timeout(20):
        first = await run
    assert first.interrupted, "run ended as finished before the fan-out's children were written"
    assert [r["id"] for r in read_rows(out)] == ["doc-t0"]
    gate.set()
    async with asyncio.timeout(20):  # the same command again: resumes, writes every child
        second = await run_workflow(spec, opts, asyncio.Event())
    assert not second.interrupted
    assert sorted(r["id"] for r in read_rows(out)) == ["doc-t0", *(f"doc-t0/{i}" for i in range(3))]
    assert inside  # the children did go through the gate
