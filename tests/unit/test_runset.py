"""Issue 17: a run is a set of tasks. The pure pieces: which ids a run owns, duplicate ids,
when a run is finished, which attempt it waits for, and the sink filtering by the set."""

from __future__ import annotations

import asyncio
import tracemalloc
from pathlib import Path

import pytest

from matrix_p2p import envelope
from matrix_p2p.bus import MemoryBus
from matrix_p2p.errors import ConfigError
from matrix_p2p.runset.completion import Completion
from matrix_p2p.runset.taskset import TaskSet, plan, root_id
from matrix_p2p.runtime.attempts import next_attempt, retry_failed, submitted_attempts
from matrix_p2p.runtime.rows import with_source
from matrix_p2p.runtime.sink import Sink
from matrix_p2p.runtime.topology import Names, ensure_workflow, hop_msg_id
from tests.conftest import DUMMY_YAML, make_spec, write_rows


def test_root_of_attempts_children_and_namespaces() -> None:
    assert root_id("q1-t0") == "q1-t0"
    assert root_id("q1-t0~a3") == "q1-t0"
    assert root_id("q1-t0~vdeadbeef~a2/1/0") == "q1-t0~vdeadbeef"
    assert root_id("q1-t0/0~a2") == "q1-t0"


def test_a_task_set_owns_its_tasks_and_their_descendants_only() -> None:
    ts = TaskSet(["a-t0", "b-t0"])
    assert ts.owns("a-t0") and ts.owns("a-t0~a2") and ts.owns("b-t0/3") and ts.owns("a-t0~a2/0")
    assert not ts.owns("c-t0")
    assert not ts.owns("a-t0~vdeadbeef")  # another code version's task
    assert not ts.owns("a-t0~r1")  # a replay is not a run's task
    assert TaskSet(["b-t0", "a-t0"]).digest == ts.digest != TaskSet(["a-t0"]).digest


def test_plan_names_the_first_duplicate_id_and_both_lines(tmp_path: Path) -> None:
    rows = [{"id": "x"}, {"id": "y"}, {"id": "z"}, {"id": "y"}, {"id": "x"}]
    spec = make_spec(tmp_path, DUMMY_YAML.replace("{path: rows.jsonl}",
                                                  "{path: rows.jsonl, id_field: id}"), rows)
    with pytest.raises(ConfigError) as err:
        plan(spec)
    msg = str(err.value)
    assert "rows.jsonl line 4: duplicate id 'y' (id), first at" in msg
    assert "rows.jsonl line 2" in msg and "\n" not in msg
    assert len(plan(spec, limit=3)) == 3  # the duplicate lies past the limit: not this run's


def test_plan_does_not_hold_the_rows(tmp_path: Path) -> None:
    """``plan`` reads the whole source before a run starts: it keeps each id and where it
    was, never the row (held rows were 1.6 KB each in the 300k-task soak: 475 MiB, and
    the process keeps the peak as its RSS for the whole run)."""
    n, big = 2000, "x" * 10_000  # 20 MB of row data in all
    spec = make_spec(tmp_path, DUMMY_YAML, [{"n": i, "text": big} for i in range(n)])
    tracemalloc.start()
    try:
        planned = plan(spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(planned) == n
    assert peak < 5_000_000, f"plan held {peak:,} bytes at its peak, reading {n} rows"


def test_plan_follows_limit_trials_and_source(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, DUMMY_YAML + "trials: 2\n", [{"n": i} for i in range(5)])
    assert plan(spec, limit=2).keys == ["rows-1-t0", "rows-1-t1", "rows-2-t0", "rows-2-t1"]
    other = write_rows(tmp_path / "other.jsonl", [{"n": 9}])
    assert plan(with_source(spec, str(other))).keys == ["other-1-t0", "other-1-t1"]
    assert plan(spec, limit=1).in_namespace("0123abcd").ids == {
        "rows-1-t0~v0123abcd", "rows-1-t1~v0123abcd"}


def test_completion_waits_for_every_task_its_children_and_later_attempts() -> None:
    c = Completion(TaskSet(["a", "b"]))
    c.row("a", "done")
    assert not c.finished and c.missing == 1
    c.row("b", "done", children=2)  # fanned out: the run waits for b/0 and b/1
    assert not c.finished and c.announced == 2
    c.row("b/0", "done")
    c.row("b/1", "failed")
    assert c.finished
    c.expect_attempt("b/1~a2")  # an interrupted --retry-failed submitted it
    assert not c.finished and c.failed_bases() == [("b/1", 1)]
    c.row("b/1~a2", "done")
    assert c.finished
    counts = c.counts()
    assert (counts.done, counts.failed, counts.children_done, counts.children_failed) == (2, 0, 2, 0)


def test_completion_ignores_an_attempt_it_already_has() -> None:
    c = Completion(TaskSet(["a"]))
    c.row("a~a3", "done")
    c.expect_attempt("a~a2")
    assert c.finished


def test_a_new_attempt_carries_the_current_code_version() -> None:
    failed = envelope.new_task(task_id="a-t0", workflow="w", workflow_version="1",
                               code_version="buggy", role="r", row={}, source="s")
    nxt = next_attempt(failed, "r", "fixed")
    assert (nxt.id, nxt.code_version) == ("a-t0~a2", "fixed")


async def _finish(bus: MemoryBus, names: Names, tid: str, status: str) -> None:
    task = envelope.new_task(task_id=tid, workflow=names.workflow, workflow_version="1",
                             code_version="c1", role="teacher", row={}, source="s")
    task.status = status
    await bus.publish(names.done if status == "done" else names.failed, envelope.encode(task),
                      msg_id=hop_msg_id(tid, 9))


async def test_retry_failed_retries_only_the_runs_own_tasks_with_the_new_code(
        tmp_path: Path) -> None:
    bus = MemoryBus()
    spec = make_spec(tmp_path, DUMMY_YAML, [{"n": 1}])
    names = await ensure_workflow(bus, spec)
    for tid in ("mine-t0", "other-t0"):
        await _finish(bus, names, tid, "failed")
    new = await retry_failed(bus, spec, owns=TaskSet(["mine-t0"]).owns, code_version="c2")
    assert new == ["mine-t0~a2"]
    m = await bus.next_msg(names.tasks_stream, 1)
    assert m is not None and envelope.decode(m.data).code_version == "c2"
    # run again (an interrupted run resumed): the attempt is still to wait for, not resent
    assert await retry_failed(bus, spec, owns=TaskSet(["mine-t0"]).owns) == ["mine-t0~a2"]
    assert await bus.stream_msgs(names.tasks_stream) == 1
    kv = await bus.key_value(names.submitted_bucket)
    assert await submitted_attempts(kv, [("mine-t0", 1), ("other-t0", 1)]) == ["mine-t0~a2"]


async def test_a_sink_with_a_task_set_writes_exactly_its_tasks(tmp_path: Path) -> None:
    bus = MemoryBus()
    spec = make_spec(tmp_path, DUMMY_YAML, [{"n": 1}])
    names = await ensure_workflow(bus, spec)
    for tid in ("a-t0", "b-t0", "c-t0", "a-t0/0"):
        await _finish(bus, names, tid, "done")
    out = tmp_path / "o.jsonl"
    sink = Sink(bus, spec, out, tasks=TaskSet(["a-t0", "b-t0"]))
    async with asyncio.timeout(10):
        await sink.run(asyncio.Event(), expect=3)
    assert sink.written == {"a-t0", "b-t0", "a-t0/0"}
    assert sink.finished()
    # the same output for another set is not trusted: rebuilt with that set's rows only
    again = Sink(bus, spec, out, tasks=TaskSet(["c-t0"]))
    async with asyncio.timeout(10):
        await again.run(asyncio.Event(), expect=1)
    lines = out.read_text().splitlines()
    assert len(lines) == 1 and '"id":"c-t0"' in lines[0]


async def test_a_run_waits_for_the_attempt_an_interrupted_retry_submitted(tmp_path: Path) -> None:
    """Why: an interrupted `--retry-failed` re-run exited while its attempts were in flight."""
    from matrix_p2p.runset.ended import all_ended

    bus = MemoryBus()
    spec = make_spec(tmp_path, DUMMY_YAML, [{"n": 1}])
    names = await ensure_workflow(bus, spec)
    await _finish(bus, names, "a-t0", "failed")
    await retry_failed(bus, spec)  # then interrupted: a-t0~a2 is live, not finished
    sink = Sink(bus, spec, tmp_path / "o.jsonl", tasks=TaskSet(["a-t0"]))
    async with asyncio.timeout(10):
        await sink.run(asyncio.Event(), expect=1)
    kv = await bus.key_value(names.submitted_bucket)
    assert sink.finished()  # attempt 1's row is there ...
    assert not await all_ended(sink, kv)  # ... but the run waits for attempt 2
    await _finish(bus, names, "a-t0~a2", "done")
    async with asyncio.timeout(10):
        stop = asyncio.Event()
        run = asyncio.create_task(sink.run(stop))
        while not await all_ended(sink, kv):
            sink.changed.clear()
            await sink.changed.wait()
        stop.set()
        await run
