"""``status`` rates from the broker alone: hops/s from consumer sequences, finished tasks/s from
the results stream's times, tokens per task from recent results, and the ETA."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from matrix_p2p import envelope
from matrix_p2p.bus import Bus
from matrix_p2p.envelope import Turn, Usage
from matrix_p2p.runtime.rates import first_seq_since, measure, render_rates
from matrix_p2p.runtime.status import render_status, workflow_status
from matrix_p2p.runtime.topology import Names, ensure_workflow
from tests.conftest import DUMMY_YAML, make_spec


def finished(spec_name: str, i: int) -> bytes:
    t = envelope.new_task(task_id=f"r{i}", workflow=spec_name, role="teacher", row={})
    t.status = "done"
    t.turns = [Turn(role="teacher", usage=Usage(prompt_tokens=100, completion_tokens=10)),
               Turn(role="judge", usage=Usage(prompt_tokens=50, completion_tokens=2))]
    if i % 2:  # a fan-out child: its parent's turns come first, and count in the parent's row
        t.turns.insert(0, Turn(role="teacher", usage=Usage(prompt_tokens=9000)))
        t.state["spawn"] = {"index": 0, "from_turn": 1, "from_hop": 0}
    return envelope.encode(t)


async def test_rates_hops_finished_tokens_and_eta(any_bus: Bus, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, DUMMY_YAML, [])
    names = await ensure_workflow(any_bus, spec)
    for i in range(10):
        await any_bus.publish(names.done, finished(spec.name, i), msg_id=f"r{i}")
    fourth, fifth = [await any_bus.next_msg(names.results_stream, seq) for seq in (4, 5)]
    assert fourth is not None and fifth is not None and fourth.time < fifth.time
    assert await first_seq_since(any_bus, names.results_stream, fifth.time) == 5
    assert await first_seq_since(any_bus, names.results_stream, fourth.time) == 4
    assert await first_seq_since(any_bus, names.results_stream, 0) == 1
    assert await first_seq_since(any_bus, names.results_stream, time.time() + 60) is None
    assert await first_seq_since(any_bus, Names("nothing-here").results_stream, 0) is None

    # three live judge tasks; the "sample" delivers and acks two of them
    for i in range(3):
        t = envelope.new_task(task_id=f"j{i}", workflow=spec.name, role="judge", row={})
        await any_bus.publish(names.task("judge"), envelope.encode(t), msg_id=f"j{i}:0")
    puller = await any_bus.puller(names.tasks_stream, "judge")

    async def hops_meanwhile(seconds: float, stop: asyncio.Event | None) -> bool:
        for d in await puller.fetch(2, 5.0):
            await d.ack()
        return False

    r = await measure(any_bus, spec, sample_s=0.5, window_s=60.0, wait=hops_meanwhile)
    await puller.unsubscribe()
    assert r.hops_per_s["judge"] > 0 and r.hops_per_s["teacher"] == 0 == r.hops_per_s["student"]
    assert r.finished_in_window == 10 and r.tasks_per_s == round(10 / 60, 2)
    assert r.sampled_results == 10
    assert r.tokens_per_task == {"judge": Usage(prompt_tokens=50, completion_tokens=2),
                                 "teacher": Usage(prompt_tokens=100, completion_tokens=10)}
    assert r.tokens_per_s == round(10 / 60 * 162, 1)
    assert r.live_tasks == 1 and r.eta_s == round(1 / (10 / 60), 1)
    text = render_rates(r)
    assert "finished 0.17 tasks/s over the last 60s (10 tasks); 1 live; ETA 0m06s" in text
    st = await workflow_status(any_bus, spec)
    st.rates = r
    assert render_status(st).endswith(text)

    # nothing finished in the window: no ETA rather than a division by zero
    quiet = await measure(any_bus, spec, sample_s=0.0, window_s=60.0,
                          wall_clock=lambda: time.time() + 3600)
    assert quiet.finished_in_window == 0 and quiet.eta_s is None
    assert "ETA unknown (nothing finished in the window)" in render_rates(quiet)
