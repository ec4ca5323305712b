"""Workers: per role, one fetch loop feeding thousands of concurrent agent slots.

One hop, as in DESIGN.md: fetch only as many messages as there are free
slots; ask the pure hop machine (``hop.Hop``) what to do with each message;
run ``agent.handle`` (between resolving and re-offloading the task's large
values: ``offload``) while a heartbeat keeps ``ack_wait`` short; ask again;
carry out the action: publish the next envelope (after the children of a
fan-out) with msg-id ``<task>:<hop>`` and await its PubAck, and only then ack
the input (or nak it, or dead-letter it). A crash anywhere redelivers, and the
msg-id dedups the republish. This module does the I/O the actions name and
nothing else.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import structlog

from matrix_p2p.agent import Agent, ChatClient, Context
from matrix_p2p.aio import pause, wait_any
from matrix_p2p.backoff import Retrying
from matrix_p2p.bus import Bus, Delivery, Puller
from matrix_p2p.envelope import Task
from matrix_p2p.errors import BusError, FailTask, RetryLater
from matrix_p2p.liveness import heal
from matrix_p2p.metrics import NullMetrics, Recorder
from matrix_p2p.resources.base import Resources
from matrix_p2p.runtime import topology
from matrix_p2p.runtime.hop import (
    Action,
    AgentBug,
    AgentFailed,
    AgentOutcome,
    AgentRetry,
    DeadLetter,
    FanOut,
    Handled,
    Hop,
    Nak,
    Publish,
    RunAgent,
    classify,
    spawn,
)
from matrix_p2p.runtime.offload import MissingObject, Offloader
from matrix_p2p.runtime.seen import KVSeenSet
from matrix_p2p.runtime.topology import Names
from matrix_p2p.workflow.spec import RoleSpec, WorkflowSpec

log = structlog.get_logger(__name__)

FETCH_MAX = 256  # per fetch request; bounded again by free slots
FETCH_TIMEOUT_S = 1.0  # also how long a stop waits for the fetch in flight


class WorkerStats(msgspec.Struct):
    """Counters of one worker process (all its roles). Read by progress displays."""

    hops: int = 0
    forwarded: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0
    redelivered: int = 0
    dead_lettered: int = 0
    spawned: int = 0  # children of fan-outs
    publish_errors: int = 0
    inflight: int = 0
    max_inflight: int = 0


class HopTimer:
    """Cancels agent calls that run past their hop timeout: one loop timer per whole
    second for every hop of the role (``asyncio.timeout`` arms one per hop, about 5 %
    of a hop's CPU). A hop ends up to a second after its timeout."""

    __slots__ = ("_checks", "_due", "_fired")

    def __init__(self) -> None:
        self._due: dict[asyncio.Task[Any], float] = {}  # running agent calls -> deadline
        self._checks: set[int] = set()  # whole seconds (loop time) a check is due at
        self._fired: set[asyncio.Task[Any]] = set()

    def arm(self, task: asyncio.Task[Any], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._due[task] = deadline
        check = math.ceil(deadline)
        if check not in self._checks:
            self._checks.add(check)
            loop.call_at(check, self._expire, check)

    def disarm(self, task: asyncio.Task[Any]) -> bool:
        """Stop watching ``task``; True if its timeout cancelled it."""
        self._due.pop(task, None)
        if task in self._fired:
            self._fired.discard(task)
            return True
        return False

    def _expire(self, check: int) -> None:
        self._checks.discard(check)
        # every call due by ``check`` scheduled this check or an earlier one
        for task in [t for t, deadline in self._due.items() if deadline <= check]:
            del self._due[task]
            self._fired.add(task)
            task.cancel()


class RoleWorker:
    """Serves one role in this process: one fetch loop, up to ``concurrency`` slots.

    Error handling: a message that cannot be decoded or belongs elsewhere is
    dead-lettered and terminated. Agent errors become routing decisions
    (``RetryLater`` and transient exceptions -> nak with backoff; ``FailTask``,
    a bug in agent code (``hop.classify``) and the last allowed delivery -> the
    task ends as failed with the reason). A failed publish
    leaves the input unacked, so it is redelivered. Bus errors in the fetch
    loop are logged and retried with backoff; the loop ends only on stop.
    """

    def __init__(
        self,
        *,
        bus: Bus,
        spec: WorkflowSpec,
        role: RoleSpec,
        agent: Agent,
        llm: ChatClient | None,
        concurrency: int,
        stats: WorkerStats,
        resources: Resources | None = None,
        clock: Callable[[], float] = time.time,
        offloader: Offloader | None = None,
        seen: KVSeenSet | None = None,
        metrics: Recorder | None = None,
        beat: Callable[[], None] = lambda: None,
    ) -> None:
        self.bus = bus
        self.spec = spec
        self.role = role
        self.agent = agent
        self.llm = llm
        self.concurrency = concurrency
        self.stats = stats
        self.clock = clock
        self.resources = resources or Resources()
        self.names = Names.of(spec)
        self.hop = Hop(spec, role, bus.max_payload)
        self.offload = offloader or Offloader(bus, spec)
        self.seen = seen or KVSeenSet(bus, spec)
        self.resource = spec.llm_for(role.name)
        self.log = log.bind(role=role.name, workflow=spec.name)
        self._inflight: dict[Delivery, float] = {}
        self._slot_free = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._handlers: set[asyncio.Task[None]] = set()
        # metrics: each action records its outcome here; _handle reports it once per hop
        self.rm = (metrics or NullMetrics()).role(role.name)
        self._outcome: dict[Delivery, str] = {}
        self._timer = HopTimer()
        self.beat = beat  # the systemd watchdog's liveness: the fetch loop turns, hops end
        # no task left stuck: messages the stream holds but the consumer will not deliver
        self.healer = heal.for_role(bus, self.names, role.name, spec.limits.ack_wait_s,
                                    clock=clock, metrics=metrics)

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None,
                  drain_timeout: float = 30.0) -> None:
        """Serve until ``stop`` is set, then drain in-flight work (at most ``drain_timeout``)."""
        puller = self.healer.wrap(await self.bus.puller(self.names.tasks_stream, self.role.name))
        if ready is not None:
            ready.set()
        try:
            async with asyncio.TaskGroup() as tg:
                heartbeat = tg.create_task(self._heartbeats())
                await self._fetch_loop(puller, stop, tg)
                await self._drain(drain_timeout)
                heartbeat.cancel()
        finally:
            await puller.unsubscribe()

    async def _fetch_loop(self, puller: Puller, stop: asyncio.Event,
                          tg: asyncio.TaskGroup) -> None:
        backoff = Retrying(0.1, 5.0)
        while not stop.is_set():
            self.beat()
            free = self.concurrency - len(self._inflight)
            if free <= 0:
                self._slot_free.clear()
                await wait_any(self._slot_free, stop)
                continue
            try:
                deliveries = await puller.fetch(min(free, FETCH_MAX), FETCH_TIMEOUT_S)
            except BusError as exc:
                delay = backoff.next()
                self.log.warning("worker.fetch_failed", error=str(exc), retry_in_s=round(delay, 2))
                await pause(delay, stop)
                continue
            backoff.reset()
            now = time.monotonic()
            for d in deliveries:
                self._inflight[d] = now
                self._idle.clear()
                handler = tg.create_task(self._handle(d))
                self._handlers.add(handler)
                handler.add_done_callback(self._handlers.discard)
            self.stats.inflight += len(deliveries)
            if self.stats.inflight > self.stats.max_inflight:
                self.stats.max_inflight = self.stats.inflight

    async def _drain(self, limit_s: float) -> None:
        if not self._inflight:
            return
        self.log.info("worker.draining", inflight=len(self._inflight))
        try:
            async with asyncio.timeout(limit_s):
                await self._idle.wait()
        except TimeoutError:
            # Hand the rest back: each cancelled handler naks its message.
            self.log.warning("worker.drain_timeout", handed_back=len(self._handlers))
            for h in list(self._handlers):
                h.cancel()

    async def _heartbeats(self) -> None:
        """Tell the server that long hops are still alive, so ``ack_wait`` stays short."""
        period = max(1.0, self.spec.limits.ack_wait_s / 3)
        while True:
            await asyncio.sleep(period)
            due = time.monotonic() - period
            for d, started in list(self._inflight.items()):
                if started <= due:
                    try:
                        await d.in_progress()
                    except Exception as exc:  # connection trouble: redelivery covers it
                        self.log.debug("worker.heartbeat_failed", error=str(exc))
                        break

    def _release(self, d: Delivery) -> None:
        self._inflight.pop(d, None)
        self.stats.inflight -= 1
        self._slot_free.set()
        self.beat()
        if not self._inflight:
            self._idle.set()

    async def _handle(self, d: Delivery) -> None:
        self.rm.hop_started()
        try:
            await self._hop(d)
        except asyncio.CancelledError:
            # shutdown past the drain timeout: hand the message back now
            try:
                await d.nak()
            except Exception as exc:
                self.log.debug("worker.nak_failed", error=str(exc))
            raise
        except Exception:
            # A bug in our own code: log it, leave the message for redelivery.
            self.log.exception("worker.hop_crashed", subject=d.subject)
        finally:
            # no outcome recorded: a crash or a hand-back, the message comes back
            self.rm.hop_done(time.monotonic() - self._inflight[d], self._outcome.pop(d, "retried"))
            self._release(d)

    async def _hop(self, d: Delivery) -> None:
        first = self.hop.arrive(d.data, d.subject, d.num_delivered, now=self.clock())
        action: Action
        if isinstance(first, RunAgent):
            task = first.task
            self.stats.hops += 1
            if d.num_delivered > 1:
                # a crash, a timeout or a nak brought this hop back: say so (chaos runs count these)
                self.stats.redelivered += 1
                self.log.info("worker.redelivered", task=task.id, hop=task.hop,
                              delivery=d.num_delivered)
            held = {lease.ref for lease in task.leases}
            outcome, children = await self._run_offloaded(task)
            action = self.hop.after_agent(task, outcome, d.num_delivered, now=self.clock(),
                                          children=children)
            if isinstance(action, Nak):
                # the hop runs again from the envelope as it arrived: a lease taken during
                # this attempt is not in it, so give it back now rather than at its TTL
                fresh = [lease for lease in task.leases if lease.ref not in held]
                if fresh:
                    await self.resources.release_all(fresh, task=task.id)
        else:
            action = first
        await self._carry_out(d, action)

    async def _run_offloaded(self, task: Task) -> tuple[AgentOutcome, list[Task]]:
        """The agent between resolving the task's offloaded values and offloading them
        again (``offload``): it sees plain values; the next envelopes (the task's, and
        its children's if it spawned any) carry references."""
        try:
            resolved = await self.offload.load(task)
        except MissingObject as exc:
            return AgentFailed(reason=str(exc)), []
        except BusError as exc:
            return AgentRetry(reason=f"cannot read offloaded values: {exc}"), []
        spawned: list[dict[str, Any]] = []
        outcome = await self._run_agent(task, spawned)
        # copied before the parent's values become references: children get their own objects
        children = spawn(task, spawned) if spawned and isinstance(outcome, Handled) else []
        try:
            await self.offload.store(task, resolved)
            for child in children:
                await self.offload.store(child)
        except BusError as exc:
            return AgentRetry(reason=f"cannot offload values: {exc}"), []
        return outcome, children

    async def _run_agent(self, task: Task, spawned: list[dict[str, Any]]) -> AgentOutcome:
        ctx = Context(
            task=task, role=self.role, spec=self.spec, llm=self.llm, resource=self.resource,
            log=self.log, now=self.clock(), resources=self.resources, children=spawned,
            seen=self.seen,
        )
        me = asyncio.current_task()
        assert me is not None
        cancelling = me.cancelling()
        self._timer.arm(me, self.role.hop_timeout_s)
        try:
            try:
                await self.agent.handle(task, ctx)
            except asyncio.CancelledError:
                # the hop timer's cancel, unless a shutdown cancelled this hop too
                if self._timer.disarm(me) and me.uncancel() <= cancelling:
                    raise TimeoutError from None
                raise
            finally:
                if self._timer.disarm(me):  # the agent swallowed the timer's cancel
                    me.uncancel()
            ctx.finish()
        except RetryLater as r:
            return AgentRetry(reason=r.reason, after_s=r.after_s)
        except FailTask as f:
            ctx.finish()  # the task ends with these turns: its row holds every token it cost
            return AgentFailed(reason=f.reason)
        except TimeoutError:
            return AgentRetry(reason=f"role {self.role.name!r} timed out after {self.role.hop_timeout_s}s")
        except Exception as exc:
            outcome = classify(exc, self.role.name)
            if isinstance(outcome, AgentBug):
                # one line and one traceback: the task fails now, retrying repeats the bug
                self.log.exception("agent.bug", task=task.id, reason=outcome.reason)
                ctx.finish()
            else:
                self.log.warning("agent.crashed", task=task.id, reason=outcome.reason)
            return outcome
        return Handled()

    async def _carry_out(self, d: Delivery, action: Action) -> None:
        if isinstance(action, Nak):
            self.stats.retried += 1
            self._outcome[d] = "retried"
            self.log.info("worker.retry", subject=d.subject, reason=action.reason,
                          delivery=d.num_delivered, after_s=action.after_s)
            await d.nak(delay=action.after_s)
        elif isinstance(action, DeadLetter):
            await self._dead_letter(d, action)
        elif isinstance(action, FanOut):
            await self._publish_then_ack(d, action.parent, children=action.children)
        else:
            await self._publish_then_ack(d, action)

    async def _publish_then_ack(self, d: Delivery, p: Publish, children: Sequence[Publish] = ()
                                ) -> None:
        try:
            for child in children:  # before the parent's end: a crash redoes them all
                await self.bus.publish(child.subject, child.data, msg_id=child.msg_id)
            await self.bus.publish(p.subject, p.data, msg_id=p.msg_id)
        except BusError as exc:
            # Not acked: the input comes back after ack_wait and the hop runs again.
            self.stats.publish_errors += 1
            self._outcome[d] = "publish_error"
            self.log.warning("worker.publish_failed", task=p.task.id, error=str(exc))
            return
        # ack only after the next hop's PubAck: a crash in between redelivers,
        # and the msg-id dedups the republish
        await d.ack()
        self._outcome[d] = p.outcome
        if p.ends_task and p.task.leases:
            await self.resources.release_all(p.task.leases, task=p.task.id)
        for child in children:
            self.stats.spawned += 1
            self.log.debug("task.spawned", task=child.task.id, parent=p.task.id)
        if p.outcome == "forwarded":
            self.stats.forwarded += 1
        elif p.outcome == "done":
            self.stats.done += 1
        else:
            self.stats.failed += 1
            self.log.info("task.failed", task=p.task.id, reason=p.reason)

    async def _dead_letter(self, d: Delivery, action: DeadLetter) -> None:
        self.log.warning("worker.dead_letter", subject=d.subject, reason=action.reason,
                         task=action.task_id)
        try:
            await topology.dead_letter(self.bus, self.names, d.data, reason=action.reason,
                                       subject=d.subject, task_id=action.task_id)
        except BusError as exc:
            # not kept yet: leave it for redelivery rather than lose it
            self.log.warning("worker.dead_letter_failed", error=str(exc))
            return
        self.stats.dead_lettered += 1
        self._outcome[d] = "dead_lettered"
        await d.term()
        if action.leases:
            await self.resources.release_all(action.leases, task=action.task_id)
