"""What a workflow's streams say: per role pending / in flight / redelivered, results."""

from __future__ import annotations

import time

import msgspec

from matrix_p2p.bus import Bus
from matrix_p2p.liveness import heal
from matrix_p2p.liveness.watch import undeliverable
from matrix_p2p.runtime.rates import Rates, render_rates
from matrix_p2p.runtime.topology import Names
from matrix_p2p.workflow.spec import WorkflowSpec


class RoleStatus(msgspec.Struct):
    role: str
    pending: int  # waiting in the stream for this role
    in_flight: int  # delivered, not yet acked
    redelivered: int
    waiting_pulls: int
    # held in the stream, but the consumer will not deliver them now (``liveness``): its
    # workers re-run them once that has lasted two ack_waits; their sequences, lowest first
    undeliverable: list[int] = []


class WorkflowStatus(msgspec.Struct):
    workflow: str
    roles: list[RoleStatus]
    live_tasks: int  # messages in the task stream
    done: int
    failed: int
    dead_letters: int
    # live tasks on task subjects that no role of this workflow serves (a typo in
    # a publisher, or a role removed from the file): nobody will consume them
    unserved: dict[str, int] = {}
    rates: Rates | None = None  # `status --sample S` (see runtime.rates)


async def workflow_status(bus: Bus, spec: WorkflowSpec) -> WorkflowStatus:
    names = Names.of(spec)
    roles = []
    for role in spec.roles:
        c = await bus.consumer_stats(names.tasks_stream, role)
        roles.append(RoleStatus(
            role=role, pending=c.pending if c else 0, in_flight=c.ack_pending if c else 0,
            redelivered=c.redelivered if c else 0, waiting_pulls=c.waiting if c else 0,
            undeliverable=await _undeliverable(bus, names, role),
        ))
    results = await bus.stream_counts(names.results_stream)
    served = {names.task(role) for role in spec.roles}
    unserved = {subject: n for subject, n in (await bus.stream_counts(names.tasks_stream)).items()
                if subject not in served and n}
    return WorkflowStatus(
        workflow=spec.name, roles=roles, live_tasks=await bus.stream_msgs(names.tasks_stream),
        done=results.get(names.done, 0), failed=results.get(names.failed, 0),
        dead_letters=await bus.stream_msgs(names.dlq_stream), unserved=unserved,
    )


async def _undeliverable(bus: Bus, names: Names, role: str) -> list[int]:
    r = await heal.read(bus, names.tasks_stream, role, names.task(role), time.time())
    return [] if r is None else [h.seq for h in r.held if undeliverable(r, h.seq)]


def render_status(st: WorkflowStatus) -> str:
    lines = [f"workflow {st.workflow}: {st.live_tasks} live tasks, {st.done} done, "
             f"{st.failed} failed, {st.dead_letters} dead letters",
             f"  {'role':<16}{'pending':>10}{'in flight':>12}{'redelivered':>13}"]
    for r in st.roles:
        lines.append(f"  {r.role:<16}{r.pending:>10}{r.in_flight:>12}{r.redelivered:>13}")
    for r in st.roles:
        if r.undeliverable:
            seqs = ", ".join(f"#{s}" for s in r.undeliverable[:5])
            lines.append(f"  liveness: {len(r.undeliverable)} tasks held for {r.role} that its "
                         f"consumer will not deliver ({seqs}): its workers re-run them once "
                         "this has lasted two ack waits (log event liveness.healed)")
    for subject, n in sorted(st.unserved.items()):
        lines.append(f"  warning: {n} tasks on {subject}, which no role of this workflow serves "
                     "(a publisher's typo, or a role removed from the file: add it back)")
    if st.rates is not None:
        lines.append(render_rates(st.rates))
    return "\n".join(lines)
