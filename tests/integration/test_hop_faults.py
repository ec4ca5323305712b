"""Faults at each step of a hop, on the in-memory bus and on a real nats-server.

Every case submits three tasks (a -> b -> a -> done: three hops, three turns),
breaks one hop of one task at a named point (``tests/faults.py``), checks at
once that no task was lost, resumes with a fresh worker on the same durable
consumers, and checks from the results stream that every task ended exactly
once, done, at hop 3. The guard each case leans on is named in its docstring
(``tests/integration/test_guards.py`` lists them all). ``ack_wait_s`` is 1 s (the
spec's minimum), so a redelivery on the real broker comes within a second; the
in-memory bus's clock is moved instead.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from matrix_p2p import envelope
from tests import fault_agents
from tests.fault_rig import HOPS, Rig, crash_then_resume, fail_then_go_on, setup, stored, worker
from tests.faults import Fault
from tests.invariants import wait_finished


async def test_crash_after_the_agent_ran_before_publishing(rig: Rig, tmp_path: Path) -> None:
    """Guard: publish-then-ack (the input is still unacked, so the hop runs again)."""
    await crash_then_resume(rig, tmp_path, Fault(point="publish", hop=2),
                            "a crash after role b ran, before its publish")


async def test_crash_after_publishing_before_the_puback(rig: Rig, tmp_path: Path) -> None:
    """Guard: msg-id dedup (the hop runs again and republishes hop 2: dropped by the broker)."""
    await crash_then_resume(rig, tmp_path, Fault(point="published", hop=2),
                            "a crash after the broker stored hop 2, before the PubAck arrived")


async def test_crash_after_the_puback_before_acking_the_input(rig: Rig, tmp_path: Path) -> None:
    """Guard: msg-id dedup (the input comes back; its republish is a duplicate)."""
    await crash_then_resume(rig, tmp_path, Fault(point="ack", subject="*.*.task.b", hop=1),
                            "a crash after hop 2's PubAck, before acking hop 1's input")


async def test_publish_fails(rig: Rig, tmp_path: Path) -> None:
    """Guard: publish-then-ack (a failed publish leaves the input for redelivery)."""
    await fail_then_go_on(rig, tmp_path, Fault(point="publish", do="fail", hop=2),
                          "a refused publish of hop 2")


async def test_ack_fails(rig: Rig, tmp_path: Path) -> None:
    """Guard: msg-id dedup (the unacked input runs again; its republish is dropped)."""
    await fail_then_go_on(rig, tmp_path, Fault(point="ack", do="fail", subject="*.*.task.b", hop=1),
                          "a failed ack of hop 1's input")


async def test_same_message_twice_concurrently(rig: Rig, tmp_path: Path) -> None:
    """Guard: msg-id dedup. Two copies of one task's first hop run at the same time
    (both inside the agent together); both publish hop 1; the broker keeps one."""
    spec, names, ids = await setup(rig, tmp_path)
    twin = next(t for t in await stored(rig.bus, names.tasks_stream) if t.id == ids[1])
    both_inside = fault_agents.gate(spec.name, copies=2)
    await rig.bus.publish(names.task("a"), envelope.encode(twin))  # a second delivery
    async with worker(rig.faulty(), spec):
        async with asyncio.timeout(5):
            await both_inside.wait()
        await wait_finished(rig.bus, names, ids, step="two concurrent deliveries of hop 0",
                            hops=HOPS, status="done", trace=rig.trace)


async def test_redelivery_after_the_task_finished(rig: Rig, tmp_path: Path) -> None:
    """Guard: msg-id dedup on the results stream. The last hop published the task's
    result (PubAck seen) and crashed before acking its input: the input comes back
    to a fresh worker after the task has finished, runs, and its result is dropped."""
    await crash_then_resume(rig, tmp_path, Fault(point="ack", subject="*.*.task.a", hop=2),
                            "a crash after the result's PubAck, before acking the last input")


async def test_stale_finished_envelope_is_not_run_again(rig: Rig, tmp_path: Path) -> None:
    """Guard: rejection of finished envelopes. A done envelope put back on a role
    subject (a stale copy, a replay gone wrong) is dead-lettered, not run."""
    spec, names, ids = await setup(rig, tmp_path)
    async with worker(rig.faulty(), spec):
        results = await wait_finished(rig.bus, names, ids, step="the first run", hops=HOPS,
                                      status="done", trace=rig.trace)
        stale = next(t for t in results if t.id == ids[1])
        await rig.bus.publish(names.task("a"), envelope.encode(stale))
        await wait_finished(rig.bus, names, ids, step="a finished envelope put back on role a",
                            hops=HOPS, status="done", trace=rig.trace)
    dead = [m async for m in rig.bus.iter_stream(names.dlq_stream)]
    assert [m.headers["Mx-Reason"] for m in dead] == [f"task {ids[1]} is already done"]
