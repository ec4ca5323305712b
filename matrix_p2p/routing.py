"""Where a task goes next. Pure: envelope + spec in, decision out, no I/O.

The worker calls ``decide`` after an agent handled a task (or raised
``RetryLater`` / ``FailTask``), then ``advance`` to build the next envelope,
and only then does any I/O. Every task therefore moves through one state
machine: running -> (forward)* -> done | failed, with retries in place.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any, Protocol

import msgspec

from matrix_p2p.envelope import Task
from matrix_p2p.errors import ConfigError
from matrix_p2p.spec import CycleRouting, PythonRouting, WorkflowSpec


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
    def entry(self, spec: WorkflowSpec) -> str: ...

    def route(self, task: Task, spec: WorkflowSpec) -> Decision: ...


def _import_ref(ref: str, *, where: str) -> Any:
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}: cannot import {module_name!r}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{where}: module {module_name!r} has no {attr!r}") from None


def import_ref(ref: str, *, where: str) -> Any:
    """Import ``module:Name``; a failure is a ``ConfigError`` naming ``where``."""
    return _import_ref(ref, where=where)


@cache
def _router_for(ref: str, path: str) -> Router:
    cls = _import_ref(ref, where=f"{path}: routing.router")
    router: Router = cls()
    return router


def load_router(spec: WorkflowSpec) -> Router:
    assert isinstance(spec.routing, PythonRouting)
    return _router_for(spec.routing.router, spec.path)


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


def on_delivery(num_delivered: int, spec: WorkflowSpec, task: Task) -> Failed | None:
    """Before handling: a hop delivered too often ends the task instead of looping."""
    if num_delivered > spec.limits.max_deliveries:
        return Failed(
            reason=(
                f"role {task.role!r} failed to finish hop {task.hop} after "
                f"{spec.limits.max_deliveries} deliveries"
            )
        )
    return None


def retry_delay(num_delivered: int, base_s: float, cap_s: float = 60.0) -> float:
    """Backoff for the next delivery of a hop: base, 2*base, 4*base ... capped."""
    return float(min(cap_s, base_s * (2 ** max(0, num_delivered - 1))))


def advance(task: Task, decision: Forward | Done | Failed, *, now: float) -> Task:
    """The next envelope for a forward, done or failed decision (a new struct)."""
    nxt = msgspec.structs.replace(task, hop=task.hop + 1)
    if isinstance(decision, Forward):
        nxt.role = decision.role
    elif isinstance(decision, Done):
        nxt.status = "done"
        nxt.finished_at = now
        if decision.reason:
            nxt.state = {**task.state, "stop_reason": decision.reason}
    else:
        nxt.status = "failed"
        nxt.error = decision.reason
        nxt.finished_at = now
    return nxt
