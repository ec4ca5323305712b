"""The I/O of the liveness check: read a consumer, obey ``watch.Watch``, hand messages back.

The owner of a consumer wraps its puller: ``puller = healer.wrap(puller)``. Every
fetch first lets the healer check, at most once per ``interval_s`` (a few
round trips: the consumer's info and the lowest message held on its subject),
then hands out the messages the watch says to re-run, as ``HealedDelivery``s,
before fetching from the broker. So a re-run goes through the owner's own code
(the worker's hop with its finished-envelope check and msg-ids, the sink's dedup by
task id), with no coordinator and no extra task: the fleet's workers of a role all
watch its consumer, and two re-runs of one message are two deliveries, deduped.

A ``HealedDelivery`` behaves like a JetStream delivery: ``ack``/``term`` delete the
stored copy of a work-queue message (a sink's results stay: they are the
replayable record), ``nak`` hands it back (re-run again once it is seen stuck
again, not before its delay), and one neither settled nor kept alive by
``in_progress`` within ``ack_wait_s`` (the owner crashed in its hop) is handed back.

Error handling: a failed check is logged once per streak and tried again at the next
interval; it never reaches the owner's fetch. A failed delete (``ack``) raises
``BusError`` as a failed ack does: the message is re-run later, and its publish deduped.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import msgspec
import structlog

from matrix_p2p import envelope
from matrix_p2p.bus import Bus, Delivery, Puller, StoredMsg
from matrix_p2p.envelope import EnvelopeError
from matrix_p2p.errors import BusError
from matrix_p2p.liveness.watch import Frontier, Held, Reading, Retention, Verdict, Watch, undeliverable
from matrix_p2p.metrics import NullMetrics, Recorder
from matrix_p2p.runtime import topology

log = structlog.get_logger(__name__)

WALK_LIMIT = 256  # held messages read per check, at most


class LivenessOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How often to look and how long a message must look stuck (see ``watch``)."""

    interval_s: float
    hold_s: float
    checks: int = 3
    safe_age_s: float = topology.DUPLICATE_WINDOW_S / 2
    ack_wait_s: float = 30.0  # a re-run neither settled nor kept alive is handed back after this

    @classmethod
    def for_ack_wait(cls, ack_wait_s: float) -> LivenessOptions:
        """A check every ``ack_wait``; stuck after three of them spanning two ``ack_wait``s."""
        return cls(interval_s=ack_wait_s, hold_s=2 * ack_wait_s, ack_wait_s=ack_wait_s)


async def read(bus: Bus, stream: str, durable: str, subject: str, now: float, *,
               frontier: Frontier | None = None, limit: int = WALK_LIMIT) -> Reading | None:
    """The consumer's state, then the messages held on ``subject`` up to the first one it can
    deliver (at most ``limit``): on a work queue from the first stored; on a limits stream
    (``frontier`` given) those its owner was not handed. None for a missing consumer."""
    c = await bus.consumer_stats(stream, durable)
    if c is None:
        return None
    r = Reading(now=now, pending=c.pending, ack_pending=c.ack_pending,
                delivered=c.delivered_seq, floor=c.ack_floor_seq)
    held: list[Held] = []
    seq = 1 if frontier is None else frontier.start(r.floor)
    while len(held) < limit:
        m = await bus.next_msg(stream, seq, subject)
        if m is None:
            break
        seq = m.seq + 1
        if frontier is not None and m.seq in frontier.seen:
            if not held:  # nothing unseen before it: the frontier moves past the gap
                frontier.pass_to(m.seq)
                seq = max(seq, (frontier.low or 0) + 1)
            continue
        held.append(Held(seq=m.seq, time=m.time))
        if not undeliverable(r, m.seq):
            break  # deliverable, and so (nearly always) is what follows
    return msgspec.structs.replace(r, held=tuple(held))


def task_of(m: StoredMsg) -> str:
    """The task a stored message carries: from its msg-id ``<task>:<hop>``, or its envelope."""
    msg_id = m.headers.get("Nats-Msg-Id")
    if msg_id and ":" in msg_id:
        return msg_id.rpartition(":")[0]
    try:
        return envelope.decode(m.data).id
    except EnvelopeError:
        return "?"


class Healer:
    """The liveness check of one consumer, owned by whoever fetches from it."""

    def __init__(self, bus: Bus, names: topology.Names, *, stream: str, durable: str,
                 subject: str, retention: Retention, role: str, options: LivenessOptions,
                 clock: Callable[[], float] = time.time, metrics: Recorder | None = None) -> None:
        self.bus = bus
        self.names = names
        self.stream = stream
        self.durable = durable
        self.subject = subject
        self.retention: Retention = retention
        self.role = role
        self.options = options
        self.clock = clock
        self.metrics = metrics or NullMetrics()
        self.watch = Watch(retention, hold_s=options.hold_s, safe_age_s=options.safe_age_s,
                           checks=options.checks)
        self.ready: deque[HealedDelivery] = deque()
        # limits: what the owner was handed (every fetch is counted: one set add each)
        self.frontier = Frontier() if retention == "limits" else None
        self._out: dict[int, float] = {}  # seq -> when a re-run handed out is handed back
        self._next = 0.0
        self._failing = False
        self.log = log.bind(role=role, stream=stream, consumer=durable)

    def wrap(self, puller: Puller) -> HealingPuller:
        return HealingPuller(puller, self)

    def take(self, n: int) -> list[Delivery]:
        return [self.ready.popleft() for _ in range(min(n, len(self.ready)))]

    async def tick(self) -> Verdict | None:
        """Check now if ``interval_s`` has passed since the last check; carry out the verdict."""
        now = self.clock()
        for seq, until in list(self._out.items()):
            if until <= now:  # neither settled nor kept alive: the owner lost it
                self.settle(seq, gone=False)
        if now < self._next:
            return None
        self._next = now + self.options.interval_s
        try:
            reading = await read(self.bus, self.stream, self.durable, self.subject, now,
                                 frontier=self.frontier)
        except BusError as exc:
            if not self._failing:
                self.log.warning("liveness.check_failed", error=str(exc))
            self._failing = True
            return None
        self._failing = False
        if reading is None:
            return None
        verdict = self.watch.observe(reading)
        for r in verdict.rerun:
            await self._rerun(r.seq, r.attempt)
        for seq in verdict.park:
            await self._park(seq, now)
        return verdict

    async def _rerun(self, seq: int, attempt: int) -> None:
        try:
            m = await self.bus.stored(self.stream, seq)
        except BusError as exc:
            self.log.warning("liveness.read_failed", seq=seq, error=str(exc))
            self.watch.settled(seq, gone=False)
            return
        if m is None:  # removed meanwhile (acked after all, or another healer's re-run)
            self.watch.settled(seq, gone=True)
            return
        self.log.warning("liveness.healed", task=task_of(m), seq=seq, attempt=attempt,
                         reason="held by the stream, not delivered by its consumer: re-run")
        self.metrics.liveness_healed(self.role, "rerun")
        self._out[seq] = self.clock() + self.options.ack_wait_s
        if self.frontier is not None:
            self.frontier.add(seq)
        self.ready.append(HealedDelivery(self, m, attempt))

    async def _park(self, seq: int, now: float) -> None:
        try:
            m = await self.bus.stored(self.stream, seq)
            if m is None:
                return
            task = task_of(m)
            reason = (f"liveness: held by {self.stream} #{seq} but never delivered by consumer "
                      f"{self.durable} (stored {now - m.time:.0f}s ago); its hop may have run "
                      f"too long ago for the broker's dedup window to drop a re-run's publish, "
                      f"so it was not re-run: requeue it if task {task} did not finish")
            await topology.dead_letter(self.bus, self.names, m.data, reason=reason,
                                       subject=m.subject, task_id=task)
            await self.bus.delete_msg(self.stream, seq)
        except BusError as exc:  # still held: parked at a later check
            self.log.warning("liveness.park_failed", seq=seq, error=str(exc))
            return
        self.log.error("liveness.parked", task=task, seq=seq, reason=reason)
        self.metrics.liveness_healed(self.role, "park")

    def settle(self, seq: int, *, gone: bool, retry_at: float | None = None) -> None:
        if self._out.pop(seq, None) is not None:
            self.watch.settled(seq, gone=gone, retry_at=retry_at)

    def keep_alive(self, seq: int) -> None:
        if seq in self._out:
            self._out[seq] = self.clock() + self.options.ack_wait_s


class HealedDelivery:
    """A stored message the consumer would not deliver, handed to its owner as one
    (``bus.Delivery``; hashable by identity). See the module docstring for its settling."""

    __slots__ = ("_headers", "_healer", "_settled", "data", "num_delivered", "seq", "subject")

    def __init__(self, healer: Healer, m: StoredMsg, attempt: int) -> None:
        self._healer = healer
        self._settled = False
        self._headers = m.headers
        self.seq = m.seq
        self.data = m.data
        self.subject = m.subject
        self.num_delivered = attempt

    @property
    def headers(self) -> dict[str, str]:
        return dict(self._headers)

    def _first_settle(self, what: str) -> None:
        if self._settled:
            raise BusError(f"{what} of {self.subject} #{self.seq}: already settled")
        self._settled = True

    async def _remove(self, what: str) -> None:
        self._first_settle(what)
        h = self._healer
        if h.retention == "work_queue":
            try:
                await h.bus.delete_msg(h.stream, self.seq)
            except BusError:
                h.settle(self.seq, gone=False)
                raise
        h.settle(self.seq, gone=True)

    async def ack(self) -> None:
        await self._remove("ack")

    async def ack_sync(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (the bus's interface)
        await self._remove("ack")

    async def term(self) -> None:
        await self._remove("term")

    async def nak(self, delay: float | None = None) -> None:
        self._first_settle("nak")
        h = self._healer
        h.settle(self.seq, gone=False, retry_at=h.clock() + (delay or 0.0))

    async def in_progress(self) -> None:
        if not self._settled:
            self._healer.keep_alive(self.seq)


class HealingPuller:
    """A puller whose fetch first lets its healer check and hands out its re-runs."""

    def __init__(self, inner: Puller, healer: Healer) -> None:
        self.inner = inner
        self.healer = healer
        self.stream = inner.stream
        self.durable = inner.durable

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:  # noqa: ASYNC109 (passed on)
        await self.healer.tick()
        healed = self.healer.take(batch)
        if healed:
            return healed
        got = await self.inner.fetch(batch, timeout)
        frontier = self.healer.frontier
        if frontier is not None:
            for d in got:
                frontier.add(d.seq)
        return got

    async def unsubscribe(self) -> None:
        await self.inner.unsubscribe()


def for_role(bus: Bus, names: topology.Names, role: str, ack_wait_s: float, *,
             clock: Callable[[], float] = time.time, metrics: Recorder | None = None) -> Healer:
    """The liveness check of a role's consumer on the task stream (a work queue)."""
    return Healer(bus, names, stream=names.tasks_stream, durable=role, subject=names.task(role),
                  retention="work_queue", role=role, clock=clock, metrics=metrics,
                  options=LivenessOptions.for_ack_wait(ack_wait_s))


def for_sink(bus: Bus, names: topology.Names, durable: str, options: LivenessOptions | None = None,
             *, metrics: Recorder | None = None) -> Healer:
    """The liveness check of a sink's consumer on the results stream (limits retention);
    by default paced by that consumer's ``ack_wait``."""
    if options is None:
        options = LivenessOptions.for_ack_wait(names.results_consumer(durable).ack_wait_s)
    return Healer(bus, names, stream=names.results_stream, durable=durable, subject=">",
                  retention="limits", role="sink", options=options, metrics=metrics)
