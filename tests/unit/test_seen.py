"""The fleet's seen-set (KV create-if-absent) as the dedup agent uses it through ctx.seen."""

from __future__ import annotations

import structlog
from matrix_p2p_agents.nr.cpu import ExactDedup

from matrix_p2p.agent import Context
from matrix_p2p.bus import MemoryBus
from matrix_p2p.envelope import new_task
from matrix_p2p.runtime.seen import KVSeenSet
from matrix_p2p.workflow.loader import load

WF = load("natural_reasoning")


async def test_first_claim_wins_and_a_redelivery_finds_its_own() -> None:
    bus = MemoryBus()
    a, b = KVSeenSet(bus, WF), KVSeenSet(bus, WF)  # two worker processes, one bucket
    assert await a.claim("k1.t0", "doc-1-t0") == "doc-1-t0"
    assert await b.claim("k1.t0", "doc-2-t0") == "doc-1-t0"
    assert await b.claim("k1.t0", "doc-1-t0") == "doc-1-t0"  # redelivered: still the owner
    assert bus.buckets["MX_NATURAL_REASONING_SEEN"] == {"k1.t0": b"doc-1-t0"}


async def test_dedup_agents_in_two_processes_share_the_fleet_seen_set() -> None:
    bus = MemoryBus()
    role = WF.roles["dedup"]
    text = "Suppose a ball falls from 20 m. Then it lands."
    out = []
    for tid in ("a-t0", "b-t0"):  # each in its own "process": its own agent and seen-set
        agent, seen = ExactDedup(role, WF), KVSeenSet(bus, WF)
        task = new_task(task_id=tid, workflow=WF.name, role="dedup", row={"text": text}, now=0.0)
        await agent.handle(task, Context(task=task, role=role, spec=WF, llm=None, resource=None,
                                         log=structlog.get_logger(), now=0.0, seen=seen))
        out.append(task.state)
    assert out[0]["kept"] is True
    assert out[1]["kept"] is False and out[1]["duplicate_of"] == "a-t0"
