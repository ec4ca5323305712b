"""Workers: per role, one fetch loop feeding thousands of concurrent agent slots.

One hop, as in DESIGN.md: fetch only as many messages as there are free
slots; decode (garbage is dead-lettered and terminated); ``agent.handle``
while a heartbeat keeps ``ack_wait`` short; ``routing.decide``; publish the
next envelope with msg-id ``<task>:<hop>`` and await its PubAck; only then
ack the input. A crash anywhere redelivers, and the msg-id dedups the
republish.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import structlog

from matrix_p2p import envelope, routing
from matrix_p2p.agent import Agent, ChatClient, Context
from matrix_p2p.aio import pause, wait_any
from matrix_p2p.bus import Bus, Delivery, Puller
from matrix_p2p.envelope import EnvelopeError, Task
from matrix_p2p.errors import BusError, ConfigError, FailTask, RetryLater
from matrix_p2p.naming import Names, hop_msg_id
from matrix_p2p.routing import Decision, Done, Failed, Forward, Retry
from matrix_p2p.spec import RoleSpec, WorkflowSpec

log = structlog.get_logger(__name__)

FETCH_MAX = 256  # per fetch request; bounded again by free slots
FETCH_TIMEOUT_S = 1.0  # also how long a stop waits for the fetch in flight
ENVELOPE_HEADROOM = 4096  # bytes under max_payload kept for headers


class WorkerStats(msgspec.Struct):
    """Counters of one worker process (all its roles). Read by progress displays."""

    hops: int = 0
    forwarded: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0
    redelivered: int = 0
    dead_lettered: int = 0
    publish_errors: int = 0
    inflight: int = 0
    max_inflight: int = 0


class RoleWorker:
    """Serves one role in this process: one fetch loop, up to ``concurrency`` slots.

    Error handling: a message that cannot be decoded or belongs elsewhere is
    dead-lettered and terminated. Agent errors become routing decisions
    (``RetryLater`` -> nak with backoff, ``FailTask`` and the last allowed
    delivery -> the task ends as failed with the reason). A failed publish
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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bus = bus
        self.spec = spec
        self.role = role
        self.agent = agent
        self.llm = llm
        self.concurrency = concurrency
        self.stats = stats
        self.clock = clock
        self.names = Names.of(spec)
        self.resource = spec.llm_for(role.name)
        self.log = log.bind(role=role.name, workflow=spec.name)
        self._inflight: dict[Delivery, float] = {}
        self._slot_free = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None,
                  drain_timeout: float = 30.0) -> None:
        """Serve until ``stop`` is set, then drain in-flight work (at most ``drain_timeout``)."""
        puller = await self.bus.puller(self.names.tasks_stream, self.role.name)
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
        backoff = 0.1
        while not stop.is_set():
            free = self.concurrency - len(self._inflight)
            if free <= 0:
                self._slot_free.clear()
                await wait_any(self._slot_free, stop)
                continue
            try:
                deliveries = await puller.fetch(min(free, FETCH_MAX), FETCH_TIMEOUT_S)
            except BusError as exc:
                self.log.warning("worker.fetch_failed", error=str(exc), retry_in_s=backoff)
                await pause(backoff, stop)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
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
        if not self._inflight:
            self._idle.set()

    async def _handle(self, d: Delivery) -> None:
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
            self._release(d)

    async def _hop(self, d: Delivery) -> None:
        try:
            task = envelope.decode(d.data)
        except EnvelopeError as exc:
            await self._dead_letter(d, str(exc))
            return
        if task.workflow != self.spec.name or task.role != self.role.name:
            await self._dead_letter(
                d, f"envelope for workflow {task.workflow!r} role {task.role!r} arrived on "
                   f"{d.subject} (workflow {self.spec.name!r} role {self.role.name!r})",
                task_id=task.id,
            )
            return
        if task.status != "running":
            await self._dead_letter(d, f"task {task.id} is already {task.status}", task_id=task.id)
            return
        self.stats.hops += 1
        if d.num_delivered > 1:
            # a crash, a timeout or a nak brought this hop back: say so (chaos runs count these)
            self.stats.redelivered += 1
            self.log.info("worker.redelivered", task=task.id, hop=task.hop,
                          delivery=d.num_delivered)
        exhausted = routing.on_delivery(d.num_delivered, self.spec, task)
        if exhausted is not None:
            await self._carry_out(d, task, exhausted)
            return
        decision = await self._run_agent(task, d.num_delivered)
        if isinstance(decision, Retry):
            if d.num_delivered >= self.spec.limits.max_deliveries:
                decision = Failed(
                    reason=f"{decision.reason} (gave up after {d.num_delivered} deliveries)"
                )
            else:
                self.stats.retried += 1
                self.log.info("worker.retry", task=task.id, hop=task.hop, reason=decision.reason,
                              delivery=d.num_delivered, after_s=decision.after_s)
                await d.nak(delay=decision.after_s)
                return
        await self._carry_out(d, task, decision)

    async def _run_agent(self, task: Task, num_delivered: int) -> Decision:
        ctx = Context(
            task=task, role=self.role, spec=self.spec, llm=self.llm, resource=self.resource,
            log=self.log, now=self.clock(),
        )
        backoff = routing.retry_delay(num_delivered, self.spec.limits.retry_backoff_s)
        try:
            async with asyncio.timeout(self.role.hop_timeout_s):
                await self.agent.handle(task, ctx)
            ctx.finish()
        except RetryLater as r:
            return Retry(after_s=max(r.after_s, backoff), reason=r.reason)
        except FailTask as f:
            return Failed(reason=f.reason)
        except TimeoutError:
            return Retry(after_s=backoff,
                         reason=f"role {self.role.name!r} timed out after {self.role.hop_timeout_s}s")
        except Exception as exc:
            self.log.exception("agent.crashed", task=task.id)
            return Retry(after_s=backoff, reason=f"agent raised {type(exc).__name__}: {exc}")
        return routing.decide(task, self.spec)

    async def _carry_out(self, d: Delivery, task: Task, decision: Forward | Done | Failed) -> None:
        nxt = routing.advance(task, decision, now=self.clock())
        if isinstance(decision, Forward):
            subject = self.names.task(decision.role)
        elif isinstance(decision, Done):
            subject = self.names.done
        else:
            subject = self.names.failed
        data = envelope.encode(nxt)
        if len(data) > self.bus.max_payload - ENVELOPE_HEADROOM:
            # It would be refused on every redelivery: end the task now, with the reason,
            # in an envelope small enough to publish (the turns' texts are dropped).
            reason = (f"envelope of {len(data)} bytes after role {self.role.name!r} exceeds the "
                      f"broker's max_payload of {self.bus.max_payload} bytes")
            decision = Failed(reason=reason)
            subject = self.names.failed
            nxt = routing.advance(_shrunk(task, self.bus.max_payload), decision, now=self.clock())
            data = envelope.encode(nxt)
        try:
            await self.bus.publish(subject, data, msg_id=hop_msg_id(nxt.id, nxt.hop))
        except BusError as exc:
            # Not acked: the input comes back after ack_wait and the hop runs again.
            self.stats.publish_errors += 1
            self.log.warning("worker.publish_failed", task=task.id, error=str(exc))
            return
        # ack only after the next hop's PubAck: a crash in between redelivers,
        # and the msg-id dedups the republish
        await d.ack()
        if isinstance(decision, Forward):
            self.stats.forwarded += 1
        elif isinstance(decision, Done):
            self.stats.done += 1
        else:
            self.stats.failed += 1
            self.log.info("task.failed", task=task.id, reason=decision.reason)

    async def _dead_letter(self, d: Delivery, reason: str, task_id: str | None = None) -> None:
        self.log.warning("worker.dead_letter", subject=d.subject, reason=reason, task=task_id)
        try:
            await self.bus.dead_letter(
                self.names, d.data, reason=reason, subject=d.subject,
                extra={"Mx-Task": task_id} if task_id else None,
            )
        except BusError as exc:
            # not kept yet: leave it for redelivery rather than lose it
            self.log.warning("worker.dead_letter_failed", error=str(exc))
            return
        self.stats.dead_lettered += 1
        await d.term()


def _shrunk(task: Task, max_payload: int) -> Task:
    """The task with its turns' texts (and, if still too big, its row and state) dropped."""
    turns = [msgspec.structs.replace(t, content="", meta={}) for t in task.turns]
    small = msgspec.structs.replace(task, turns=turns)
    if len(envelope.encode(small)) > max_payload - ENVELOPE_HEADROOM:
        small = msgspec.structs.replace(small, row={}, state={})
    return small


def make_agent(spec: WorkflowSpec, role: RoleSpec) -> Agent:
    cls = routing.import_ref(role.agent, where=f"{spec.path}: roles.{role.name}.agent")
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise ConfigError(f"{spec.path}: roles.{role.name}.agent: {role.agent} is not an Agent class")
    agent: Agent = cls(role, spec)
    return agent


async def ensure_workflow(bus: Bus, spec: WorkflowSpec, roles: list[str] | None = None, *,
                          replicas: int | None = None) -> None:
    """Streams and one durable consumer per role. Safe to run again and from many workers.

    ``replicas``: stream replicas on a JetStream cluster (None keeps what exists, else R1).
    """
    names = Names.of(spec)
    await bus.ensure_streams(names, replicas=replicas)
    for name in roles or list(spec.roles):
        role = spec.roles[name]
        await bus.ensure_role_consumer(
            names, name, ack_wait_s=spec.limits.ack_wait_s, max_ack_pending=role.max_ack_pending
        )


async def serve_roles(
    bus: Bus,
    spec: WorkflowSpec,
    roles: list[str],
    *,
    llm_for: Mapping[str, ChatClient | None],
    stop: asyncio.Event,
    concurrency: int | None = None,
    stats: WorkerStats | None = None,
    ready: asyncio.Event | None = None,
    drain_timeout: float = 30.0,
    replicas: int | None = None,
) -> WorkerStats:
    """Run the given roles in this process until ``stop``; returns the counters."""
    stats = stats or WorkerStats()
    await ensure_workflow(bus, spec, roles, replicas=replicas)
    agents = {name: make_agent(spec, spec.roles[name]) for name in roles}
    for agent in agents.values():
        await agent.setup()
    readies = [asyncio.Event() for _ in roles]
    try:
        async with asyncio.TaskGroup() as tg:
            for name, role_ready in zip(roles, readies, strict=True):
                role = spec.roles[name]
                rw = RoleWorker(
                    bus=bus, spec=spec, role=role, agent=agents[name], llm=llm_for.get(name),
                    concurrency=concurrency or role.concurrency, stats=stats,
                )
                tg.create_task(rw.run(stop, role_ready, drain_timeout))
            if ready is not None:
                await asyncio.gather(*(e.wait() for e in readies))
                ready.set()
    finally:
        for agent in agents.values():
            await agent.close()
    return stats


def parse_roles(value: str, spec: WorkflowSpec) -> list[str]:
    """``all`` or a comma-separated list of the workflow's roles."""
    if value.strip() == "all":
        return list(spec.roles)
    roles = [r.strip() for r in value.split(",") if r.strip()]
    unknown = [r for r in roles if r not in spec.roles]
    if unknown or not roles:
        raise ConfigError(
            f"--role: unknown role(s) {', '.join(unknown) or '(none)'} in workflow {spec.name!r} "
            f"(roles: {', '.join(spec.roles)}, or 'all')"
        )
    return roles


def summarize(stats: WorkerStats) -> dict[str, Any]:
    return msgspec.structs.asdict(stats)
