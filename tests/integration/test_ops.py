"""Dead-letter tools and replay against a real nats-server (matrix_p2p.runtime.replay)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from matrix_p2p import envelope
from matrix_p2p.bus import Bus
from matrix_p2p.errors import ConfigError
from matrix_p2p.runtime import deadletters
from matrix_p2p.runtime import replay as ops
from matrix_p2p.runtime.topology import Names, ensure_workflow
from tests.conftest import DUMMY_YAML, make_spec
from tests.integration.helpers import read_rows, run_until


async def test_dlq_list_show_requeue(bus: Bus, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, DUMMY_YAML, [{"n": i} for i in range(5)])
    names = Names.of(spec)
    await ensure_workflow(bus, spec)
    misrouted = envelope.new_task(task_id="m1", workflow=spec.name, role="judge", row={"n": 99})
    await bus.publish(names.task("teacher"), b"\x00garbage")
    await bus.publish(names.task("teacher"), envelope.encode(misrouted))
    out = tmp_path / "out.jsonl"
    _, stats, _ = await run_until(bus, spec, out, expect=5)
    assert stats.dead_lettered == 2

    letters = await deadletters.dlq_list(bus, names)
    assert [dl.subject for dl in letters] == [names.task("teacher")] * 2
    assert letters[0].reason == "invalid envelope: Expected `object`, got `int`"
    assert letters[0].size == 8 and letters[0].time > 0
    assert letters[1].task == "m1" and "role 'judge' arrived on" in letters[1].reason

    shown = await deadletters.dlq_show(bus, names, letters[1].seq)
    assert shown.task is not None and shown.task.id == "m1"
    assert shown.headers["Mx-Subject"] == names.task("teacher")
    bad = await deadletters.dlq_show(bus, names, letters[0].seq)
    assert bad.task is None and bad.decode_error is not None and bad.data == b"\x00garbage"
    with pytest.raises(ConfigError, match="no dead letter #999"):
        await deadletters.dlq_show(bus, names, 999)

    # to a role: the undecodable one is skipped with its reason, the envelope goes to `judge`
    r = await deadletters.dlq_requeue(bus, spec, None, role="judge")
    assert r.requeued == [letters[1].seq]
    assert "cannot requeue to a role" in r.skipped[letters[0].seq]
    assert [dl.seq for dl in await deadletters.dlq_list(bus, names)] == [letters[0].seq]
    _, stats, _ = await run_until(bus, spec, out, expect=6, submit_rows=False)
    rows = read_rows(out)
    assert len(rows) == 6 and Counter(r["id"] for r in rows)["m1"] == 1
    # requeue the garbage to where it came from: dead-lettered again, nothing lost
    r = await deadletters.dlq_requeue(bus, spec, [letters[0].seq, 12345])
    assert r.requeued == [letters[0].seq] and r.skipped == {12345: "no such dead letter"}
    with pytest.raises(ConfigError, match="unknown role 'referee'"):
        await deadletters.dlq_requeue(bus, spec, None, role="referee")


async def test_replay_rejudges_done_tasks_once(bus: Bus, tmp_path: Path) -> None:
    n = 30
    spec = make_spec(tmp_path, DUMMY_YAML, [{"n": i} for i in range(n)])
    out = tmp_path / "out.jsonl"
    await run_until(bus, spec, out, expect=n)
    originals = {r["id"]: r for r in read_rows(out)}

    r = await ops.replay(bus, spec, role="judge")
    assert (r.replayed, r.already) == (n, 0)
    again = await ops.replay(bus, spec, role="judge")
    assert (again.replayed, again.already) == (0, n)  # idempotent per generation
    await run_until(bus, spec, out, expect=2 * n, submit_rows=False)
    rows = read_rows(out)
    ids = Counter(row["id"] for row in rows)
    assert len(ids) == 2 * n and max(ids.values()) == 1
    for row in rows:
        base, gen = ops.split_replay_id(row["id"])
        if gen == 0:
            continue
        orig = originals[base]
        assert row["status"] == "done"
        assert row["result"]["replay"] == {"generation": 1, "of": base, "role": "judge",
                                           "from_turn": len(orig["dialogue"]),
                                           "from_hop": orig["hops"]}
        # the dialogue was not regenerated: the original turns come first, then the judge
        assert row["dialogue"][: len(orig["dialogue"])] == orig["dialogue"]
        assert row["dialogue"][len(orig["dialogue"])]["role"] == "judge"
    # a second generation replays the originals only
    r2 = await ops.replay(bus, spec, role="judge", generation=2, dry_run=True)
    assert (r2.replayed, r2.skipped) == (n, n)


def test_replay_ids() -> None:
    assert ops.replay_id("row-1-t0", 1) == "row-1-t0~r1"
    assert ops.replay_id("row-1-t0~r1", 2) == "row-1-t0~r2"
    assert ops.split_replay_id("row-1-t0~r12") == ("row-1-t0", 12)
    assert ops.split_replay_id("a~rb") == ("a~rb", 0)
    t = envelope.new_task(task_id="x", workflow="w", role="judge", row={})
    t = msgspec.structs.replace(t, status="done", finished_at=1.0, state={"stop_reason": "agreed"})
    spec_like = msgspec.defstruct("S", [("name", str), ("version", str)])(name="w2", version="3")
    nxt = ops.replayed_task(t, target=spec_like, role="judge", generation=1)  # type: ignore[arg-type]
    assert (nxt.id, nxt.status, nxt.workflow, nxt.finished_at) == ("x~r1", "running", "w2", None)
    assert "stop_reason" not in nxt.state


async def test_replay_respects_the_admission_window(bus: Bus, tmp_path: Path) -> None:
    n = 12
    spec = make_spec(tmp_path, DUMMY_YAML.replace("limits: {", "limits: {max_inflight: 5, "),
                     [{"n": i} for i in range(n)])
    assert spec.limits.max_inflight == 5
    await run_until(bus, spec, tmp_path / "out.jsonl", expect=n)
    names = Names.of(spec)
    # no workers now: the replay must stop at the window and wait for room
    replay = asyncio.create_task(ops.replay(bus, spec, role="judge"))
    try:
        async with asyncio.timeout(20):
            # the condition lives in the broker: there is no event to wait on
            while await bus.stream_msgs(names.tasks_stream) < 5:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        done, _ = await asyncio.wait({replay}, timeout=1.0)
        assert not done  # still waiting for room
        assert await bus.stream_msgs(names.tasks_stream) == 5
    finally:
        replay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await replay
