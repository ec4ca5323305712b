"""Which role comes next after a role handled a task. Pure: envelope + spec in,
decision out, no I/O.

The workflow's routing is either a cycle (``type: cycle``: roles in order until
``stop_when`` or ``max_turns``) or a router class (``type: python``) with
``entry(spec)`` and ``route(task, spec)``. What happens around that decision
(deliveries, retries, envelope size, the next envelope) is ``hop``.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from matrix_p2p.envelope import Task
from matrix_p2p.workflow.spec import CycleRouting, WorkflowSpec, router_instance


class Forward(msgspec.Struct, frozen=True):
    role: str


class Done(msgspec.Struct, frozen=True):
    reason: str = ""


class Failed(msgspec.Struct, frozen=True):
    reason: str


class Retry(msgspec.Struct, frozen=True):
    """Hand the message back; the same hop runs again after ``after_s``."""

    after_s: float
    reason: str


Decision = Forward | Done | Failed | Retry


class Router(Protocol):
    """A ``type: python`` routing: the entry role, and the decision after each hop."""

    def entry(self, spec: WorkflowSpec) -> str: ...

    def route(self, task: Task, spec: WorkflowSpec) -> Decision: ...


def load_router(spec: WorkflowSpec) -> Router:
    """The workflow's router (imported and made once per workflow file)."""
    assert not isinstance(spec.routing, CycleRouting)
    router: Router = router_instance(spec.routing.router, spec.path)
    return router


def cycle_route(task: Task, routing: CycleRouting) -> Decision:
    """Sequence routing: next role in the cycle, until ``stop_when`` or ``max_turns``."""
    if routing.stop_when and task.state.get(routing.stop_when):
        return Done(reason=routing.stop_when)
    if len(task.turns) >= routing.max_turns:
        if routing.on_max_turns == "failed":
            return Failed(reason=f"no stop condition after {routing.max_turns} turns")
        return Done(reason="max_turns")
    roles = routing.roles
    try:
        i = roles.index(task.role)
    except ValueError:
        return Failed(reason=f"role {task.role!r} is not in the routing cycle")
    return Forward(role=roles[(i + 1) % len(roles)])


def decide(task: Task, spec: WorkflowSpec) -> Decision:
    """The decision after ``task.role`` handled ``task`` without raising."""
    if task.hop + 1 >= spec.limits.max_hops:
        return Failed(reason=f"exceeded limits.max_hops={spec.limits.max_hops}")
    if isinstance(spec.routing, CycleRouting):
        decision = cycle_route(task, spec.routing)
    else:
        decision = load_router(spec).route(task, spec)
    if isinstance(decision, Forward) and decision.role not in spec.roles:
        return Failed(reason=f"router chose unknown role {decision.role!r}")
    return decision
