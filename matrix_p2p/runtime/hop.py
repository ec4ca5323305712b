"""One hop as a pure state machine: what to do with a delivered message.

The worker asks twice and carries out what it is told:

1. ``arrive(data, subject, num_delivered, ...)`` on a delivery: dead-letter it
   (undecodable, misrouted, already finished), end the task (delivered too
   often), or ``RunAgent``;
2. ``after_agent(task, outcome, num_delivered, ...)`` once the agent ran:
   ``Publish`` the next envelope (to a role, or done/failed), ``FanOut`` the
   children the agent spawned (``children``), or ``Nak`` to run the same hop
   again later.

Every ``Publish`` is followed by an ack of the input, only after its PubAck; a
``Nak`` hands the message back; a ``DeadLetter`` keeps the bytes and terms the
message. No I/O here: the decisions are property-tested without a broker
(``tests/unit/test_hop.py``).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from matrix_p2p import envelope
from matrix_p2p.envelope import EnvelopeError, Lease, Task
from matrix_p2p.runtime.routing import Done, Failed, Forward, Retry, decide
from matrix_p2p.runtime.topology import Names, hop_msg_id
from matrix_p2p.workflow.spec import RoleSpec, WorkflowSpec

ENVELOPE_HEADROOM = 4096  # bytes under max_payload kept for headers
RETRY_CAP_S = 60.0

Outcome = Literal["forwarded", "done", "failed"]


# ---------------------------------------------------------------- what the agent did
class Handled(msgspec.Struct, frozen=True):
    """The agent returned normally: routing decides what comes next."""


class AgentRetry(msgspec.Struct, frozen=True):
    """Transient trouble (``RetryLater``, a timeout): run the hop again."""

    reason: str
    after_s: float = 0.0


class AgentFailed(msgspec.Struct, frozen=True):
    """The task cannot succeed (``FailTask``)."""

    reason: str


class AgentBug(msgspec.Struct, frozen=True):
    """The agent's own code is wrong (an ``AttributeError``, a ``KeyError`` ...): running it
    again gives the same error, so the task fails at once with the reason."""

    reason: str


AgentOutcome = Handled | AgentRetry | AgentFailed | AgentBug

# Exceptions that mean a bug in agent code, not trouble in the world: never retried.
BUG_TYPES: tuple[type[BaseException], ...] = (
    AttributeError, TypeError, KeyError, NameError, ImportError, AssertionError, IndexError,
    ZeroDivisionError, NotImplementedError, RecursionError, SyntaxError,
)  # ValueError is not here: parsing a model's answer fails that way, and may not next time


def classify(exc: Exception, role: str) -> AgentBug | AgentRetry:
    """What an exception escaping ``agent.handle`` means: a bug (fail now) or transient
    trouble (an ``OSError``, a ``RuntimeError`` from a library: retry the hop)."""
    reason = f"agent {role!r} raised {type(exc).__name__}: {exc}"
    if isinstance(exc, BUG_TYPES):
        return AgentBug(reason=f"bug in {reason}")
    return AgentRetry(reason=reason.replace(f"agent {role!r} raised", "agent raised"))


# ---------------------------------------------------------------- what the worker does
class RunAgent(msgspec.Struct, frozen=True):
    task: Task


class Publish(msgspec.Struct, frozen=True):
    """Publish ``data`` to ``subject`` with ``msg_id``, await the PubAck, then ack the input."""

    subject: str
    data: bytes
    msg_id: str
    task: Task  # the next envelope, as published
    outcome: Outcome
    reason: str = ""

    @property
    def ends_task(self) -> bool:
        return self.outcome != "forwarded"


class Nak(msgspec.Struct, frozen=True):
    """Hand the message back; it is delivered again after ``after_s``."""

    after_s: float
    reason: str


class DeadLetter(msgspec.Struct, frozen=True):
    """Keep the bytes with the reason on the dead-letter stream, then term the message."""

    reason: str
    task_id: str | None = None
    leases: list[Lease] = []  # the task ends here: its leases are released


class FanOut(msgspec.Struct, frozen=True):
    """Publish every child (msg-id ``<child>:0``), then the parent's end (done, with
    ``state.children``), then ack the input. A crash anywhere redelivers the parent's
    hop; its children get the same ids and msg-ids again, so none is created twice."""

    children: list[Publish]
    parent: Publish


Action = Publish | FanOut | Nak | DeadLetter


def child_id(parent: str, index: int) -> str:
    """A child's id: the parent's and the child's index (valid as msg-id and KV key)."""
    return f"{parent}/{index}"


SPAWN_KEY = "spawn"  # a child's state: {"index", "from_turn", "from_hop"} (own_turns)
NOT_A_ROW = ("kept", "filter_reason")  # a fanned-out parent's filter status: its children's


def spawn(task: Task, children: list[dict[str, Any]]) -> list[Task]:
    """The child envelopes of ``task`` as its agent left it (``children``: what
    ``ctx.spawn`` recorded). Each is a copy of the parent (row, state) with the child's
    own ``state`` keys on top, ``row`` if given instead of the parent's, its own id,
    ``parent`` set, at hop 0 and without the parent's leases and objects (offloaded
    values are put again under the child's id).

    Turns: the parent's turns that no child took (its history and the shared work of
    this hop), then the turns given to this child (``ctx.spawn(turns=...)``) and none of
    its siblings'. ``state["spawn"]["from_turn"]`` says where its own begin: its row
    counts only those (``own_turns``), the parent's row the rest, so each token is
    counted once. A child is not a replay: a ``replay`` mark inherited from the parent
    is dropped (the parent's id still says where it came from)."""
    taken = {id(t) for c in children for t in c.get("turns", ())}
    shared = [t for t in task.turns if id(t) not in taken]
    out = []
    for i, c in enumerate(children):
        mine = {id(t) for t in c.get("turns", ())}
        own = [t for t in task.turns if id(t) in mine]
        row = c.get("row")
        state = {k: v for k, v in task.state.items() if k != "replay"}
        state.update(c.get("state", {}))
        state[SPAWN_KEY] = {"index": i, "from_turn": len(shared), "from_hop": 0}
        out.append(msgspec.structs.replace(
            task, id=child_id(task.id, i), parent=task.id, hop=0,
            row=dict(task.row if row is None else row), state=state,
            turns=shared + own, leases=[], objects=[]))
    return out


def own_turns(task: Task) -> tuple[int, int]:
    """Where the turns and hops that ``task``'s own row counts begin: ``(from_turn,
    from_hop)``. A replay's (``state["replay"]``, runtime/replay.py) begin where its
    original ended, a fan-out child's (``state["spawn"]``) after its parent's turns;
    a replay of a child is a replay. Every other task counts all its turns."""
    for key in ("replay", SPAWN_KEY):
        mark = task.state.get(key)
        if isinstance(mark, dict):
            return int(mark.get("from_turn", 0)), int(mark.get("from_hop", 0))
    return 0, 0


class Hop:
    """The pure decisions of one role: built once per role worker."""

    __slots__ = ("max_payload", "names", "role", "spec")

    def __init__(self, spec: WorkflowSpec, role: RoleSpec, max_payload: int) -> None:
        self.spec = spec
        self.role = role
        self.names = Names.of(spec)
        self.max_payload = max_payload

    def arrive(self, data: bytes, subject: str, num_delivered: int, *,
               now: float) -> RunAgent | Publish | DeadLetter:
        """The first decision on a delivery, before any agent code runs."""
        try:
            task = envelope.decode(data)
        except EnvelopeError as exc:
            return DeadLetter(reason=str(exc))
        if task.workflow != self.spec.name or task.role != self.role.name:
            return DeadLetter(
                reason=(f"envelope for workflow {task.workflow!r} role {task.role!r} arrived on "
                        f"{subject} (workflow {self.spec.name!r} role {self.role.name!r})"),
                task_id=task.id, leases=task.leases)
        if task.status != "running":
            # a finished task must never run again (a stale copy, or a replay gone wrong)
            return DeadLetter(reason=f"task {task.id} is already {task.status}", task_id=task.id)
        limit = self.spec.limits.max_deliveries
        if num_delivered > limit:
            # a hop that keeps coming back ends the task instead of looping forever
            return self.finish(task, Failed(
                reason=f"role {task.role!r} failed to finish hop {task.hop} after {limit} deliveries"),
                now=now)
        return RunAgent(task=task)

    def after_agent(self, task: Task, outcome: AgentOutcome, num_delivered: int, *,
                    now: float, children: list[Task] | None = None) -> Publish | FanOut | Nak:
        """The decision once the agent ran (``task`` as the agent left it; ``children``:
        what it spawned, from ``spawn``)."""
        if children and isinstance(outcome, Handled):
            return self.fan_out(task, children, now=now)
        if isinstance(outcome, AgentFailed | AgentBug):
            return self.finish(task, Failed(reason=outcome.reason), now=now)
        if isinstance(outcome, AgentRetry):
            return self._retry(task, Retry(after_s=outcome.after_s, reason=outcome.reason),
                               num_delivered, now=now)
        decision = decide(task, self.spec)
        if isinstance(decision, Retry):
            return self._retry(task, decision, num_delivered, now=now)
        return self.finish(task, decision, now=now)

    def _retry(self, task: Task, retry: Retry, num_delivered: int, *, now: float) -> Publish | Nak:
        if num_delivered >= self.spec.limits.max_deliveries:
            return self.finish(task, Failed(
                reason=f"{retry.reason} (gave up after {num_delivered} deliveries)"), now=now)
        delay = max(retry.after_s, retry_delay(num_delivered, self.spec.limits.retry_backoff_s))
        return Nak(after_s=delay, reason=retry.reason)

    def fan_out(self, task: Task, children: list[Task], *, now: float) -> FanOut:
        """Each child routed as the parent would have been after this hop; the parent ends."""
        pubs = []
        for child in children:
            decision = decide(child, self.spec)
            if isinstance(decision, Retry):  # nothing to hand back: the child is new
                decision = Failed(reason=f"router asked to retry a new child: {decision.reason}")
            pubs.append(self.finish(child, decision, now=now, first=True))
        # the parent's row: the turns no child took (the children's first turns), and
        # not a kept row itself (its children are)
        start = int(children[0].state[SPAWN_KEY]["from_turn"])
        state = {k: v for k, v in task.state.items() if k not in NOT_A_ROW}
        parent = msgspec.structs.replace(task, turns=children[0].turns[:start],
                                         state={**state, "children": len(children)})
        return FanOut(children=pubs, parent=self.finish(parent, Done(reason="fanned out"),
                                                        now=now))

    def finish(self, task: Task, decision: Forward | Done | Failed, *, now: float,
               first: bool = False) -> Publish:
        """The publish that carries ``decision`` out: the next envelope, its subject and id
        (``first``: a new child's first envelope, at hop 0)."""
        nxt = advance(task, decision, now=now, first=first)
        data = envelope.encode(nxt)
        if len(data) > self.max_payload - ENVELOPE_HEADROOM:
            # It would be refused on every redelivery: end the task now, with the reason,
            # in an envelope small enough to publish (the turns' texts are dropped).
            decision = Failed(reason=(
                f"envelope of {len(data)} bytes after role {self.role.name!r} exceeds the "
                f"broker's max_payload of {self.max_payload} bytes"))
            nxt = advance(shrunk(task, self.max_payload), decision, now=now, first=first)
            data = envelope.encode(nxt)
        outcome: Outcome
        if isinstance(decision, Forward):
            subject, outcome = self.names.task(decision.role), "forwarded"
        elif isinstance(decision, Done):
            subject, outcome = self.names.done, "done"
        else:
            subject, outcome = self.names.failed, "failed"
        return Publish(subject=subject, data=data, msg_id=hop_msg_id(nxt.id, nxt.hop), task=nxt,
                       outcome=outcome, reason=decision.reason if not isinstance(decision, Forward)
                       else "")


def retry_delay(num_delivered: int, base_s: float, cap_s: float = RETRY_CAP_S) -> float:
    """Spacing of a hop's deliveries: base, 2*base, 4*base ... capped. Deterministic on
    purpose (no jitter): the broker's redelivery timer spreads hops already."""
    return float(min(cap_s, base_s * (2 ** max(0, num_delivered - 1))))


def advance(task: Task, decision: Forward | Done | Failed, *, now: float,
            first: bool = False) -> Task:
    """The next envelope for a forward, done or failed decision (a new struct; ``first``:
    the hop stays, a new child's first envelope)."""
    nxt = msgspec.structs.replace(task, hop=task.hop if first else task.hop + 1)
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


def shrunk(task: Task, max_payload: int) -> Task:
    """The task with its turns' texts (and, if still too big, its row and state) dropped."""
    turns = [msgspec.structs.replace(t, content="", meta={}) for t in task.turns]
    small = msgspec.structs.replace(task, turns=turns)
    if len(envelope.encode(small)) > max_payload - ENVELOPE_HEADROOM:
        small = msgspec.structs.replace(small, row={}, state={})
    return small
