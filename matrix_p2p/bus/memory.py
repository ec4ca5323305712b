"""The bus in one process: the same interface as JetStream, for fast unit tests.

``MemoryBus`` keeps streams, durable pull consumers and key-value buckets in
dicts and behaves like JetStream where the runtime depends on it: subject
filters with ``*`` and ``>``; work-queue retention (a message goes when it is
acked or termed) and limits retention; one shared durable consumer per name,
whose ``fetch`` hands out up to ``batch`` messages and respects
``max_ack_pending``; ``nak(delay)``, ``in_progress`` and ``ack_wait`` expiry
redeliver with a growing ``num_delivered``; publish dedups by msg-id within
the stream's duplicate window; a message over ``max_payload`` is refused with
``PayloadTooLargeError``. Failures are worded by ``bus.errors`` exactly as the
JetStream bus words them. ``tests/integration/test_bus_contract.py`` runs one
suite against both.

Time: ``clock`` (Unix seconds, default ``time.time``) drives ack deadlines, nak
delays and the dedup window. A test that moves an injected clock calls
``wake()`` so that a waiting ``fetch`` looks again; ``fetch`` itself waits on an
event with a timeout, never in a polling sleep.

Faults: ``strand`` plays a consumer that passes over a stored message for good;
``fault`` (settable at any time) is called as ``fault(op, target)``
before every operation: ``op`` is one of ``publish``, ``fetch``, ``ack``,
``ack_sync``, ``nak``, ``term``, ``in_progress``, ``ensure_stream``,
``ensure_consumer``, ``kv.create``, ``kv.exists``; ``target`` the subject,
durable, stream or key. An exception it returns is raised in place of the
operation (return a ``BusError`` to play a broker failure).

Not modelled: replicas (kept as given), stream limits other than
``max_msg_size``, overlapping stream subjects (the first stream wins).
``fleet_state()`` gives one ``InMemoryFleetState`` shared by every user of this bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from matrix_p2p.bus import errors
from matrix_p2p.bus.kv import MemoryKV
from matrix_p2p.bus.objects import MemoryObjects
from matrix_p2p.bus.types import Bus, ConsumerDef, ConsumerStats, Delivery, StoredMsg, StreamDef, iter_by_next

if TYPE_CHECKING:
    from matrix_p2p.llm.fleet import InMemoryFleetState

FaultHook = Callable[[str, str], BaseException | None]
DEFAULT_MAX_PAYLOAD = 1024 * 1024  # nats-server's default
DEFAULT_DUPLICATE_WINDOW_S = 120.0  # JetStream's default


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, ``>`` one or more trailing tokens."""
    pat, sub = pattern.split("."), subject.split(".")
    for i, p in enumerate(pat):
        if p == ">":
            return len(sub) > i
        if i >= len(sub) or (p != "*" and p != sub[i]):
            return False
    return len(pat) == len(sub)


class _Stream:
    def __init__(self, d: StreamDef) -> None:
        self.d = d
        self.replicas = d.replicas or 1
        self.msgs: dict[int, StoredMsg] = {}  # by sequence, in sequence order
        self.last_seq = 0
        self.ids: dict[str, float] = {}  # msg-id -> when it was stored (dedup)

    def accepts(self, subject: str) -> bool:
        return any(subject_matches(p, subject) for p in self.d.subjects)


class _Consumer:
    """Delivery state of one durable: what was handed out and when it is due again."""

    def __init__(self, stream: _Stream, d: ConsumerDef) -> None:
        self.stream = stream
        self.d = d
        self.cursor = 0  # the last stream sequence considered for a first delivery
        self.due: dict[int, float] = {}  # pending (unacked) seq -> when to redeliver
        self.count: dict[int, int] = {}  # pending seq -> deliveries so far
        self.waiting = 0
        self.delivered = 0  # deliveries so far, as JetStream's consumer sequence
        self.passed: set[int] = set()  # sequences it will never deliver (``MemoryBus.strand``)

    def wants(self, m: StoredMsg) -> bool:
        f = self.d.filter_subject
        return f is None or subject_matches(f, m.subject)

    def take(self, batch: int, now: float) -> list[tuple[StoredMsg, int]]:
        """Due redeliveries first, then new messages while ``max_ack_pending`` allows."""
        out: list[tuple[StoredMsg, int]] = []
        for seq in sorted(s for s, t in self.due.items() if t <= now):
            if len(out) == batch:
                return out
            m = self.stream.msgs.get(seq)
            if m is None:  # deleted meanwhile
                self.forget(seq)
                continue
            out.append(self._deliver(m, now))
        seq = self.cursor
        while len(out) < batch and len(self.due) < self.d.max_ack_pending and seq < self.stream.last_seq:
            seq += 1
            self.cursor = seq
            m = self.stream.msgs.get(seq)
            if m is not None and self.wants(m) and seq not in self.passed:
                out.append(self._deliver(m, now))
        return out

    def _deliver(self, m: StoredMsg, now: float) -> tuple[StoredMsg, int]:
        self.due[m.seq] = now + self.d.ack_wait_s
        n = self.count[m.seq] = self.count.get(m.seq, 0) + 1
        self.delivered += 1
        return m, n

    def forget(self, seq: int) -> None:
        self.due.pop(seq, None)
        self.count.pop(seq, None)

    def unseen(self) -> int:
        return sum(1 for s, m in self.stream.msgs.items()
                   if s > self.cursor and self.wants(m) and s not in self.passed)

    def ack_floor(self) -> int:
        return min(self.due) - 1 if self.due else self.cursor


class MemoryDelivery:
    """One message handed out by a ``MemoryPuller`` (hashable by identity)."""

    __slots__ = ("_bus", "_consumer", "_headers", "_settled", "data", "num_delivered", "seq",
                 "subject")

    def __init__(self, bus: MemoryBus, consumer: _Consumer, m: StoredMsg, n: int) -> None:
        self._bus = bus
        self._consumer = consumer
        self._settled = False
        self.seq = m.seq
        self.data = m.data
        self.subject = m.subject
        self.num_delivered = n
        self._headers = m.headers

    @property
    def headers(self) -> dict[str, str]:
        return dict(self._headers)

    def _settle(self, op: str, what: str) -> bool:
        """Check and mark a settling op; False when the message is no longer pending."""
        self._bus.check(op, self.subject, what)
        if self._settled:
            raise errors.already_acked(what)
        self._settled = True
        return self.seq in self._consumer.due

    def _remove(self) -> None:
        self._consumer.forget(self.seq)
        if self._consumer.stream.d.retention == "work_queue":
            self._bus.drop(self._consumer.stream, self.seq)

    async def ack(self) -> None:
        if self._settle("ack", f"ack of {self.subject}"):
            self._remove()

    async def ack_sync(self, timeout: float = 5.0) -> None:
        if self._settle("ack_sync", f"ack of {self.subject} (confirmed)"):
            self._remove()

    async def nak(self, delay: float | None = None) -> None:
        if self._settle("nak", f"nak of {self.subject}"):
            self._consumer.due[self.seq] = self._bus.clock() + (delay or 0.0)
            self._bus.wake()

    async def term(self) -> None:
        if self._settle("term", f"term of {self.subject}"):
            self._remove()

    async def in_progress(self) -> None:
        # like nats-py: allowed any number of times, ignored once the message is settled
        self._bus.check("in_progress", self.subject, f"in-progress of {self.subject}")
        if self.seq in self._consumer.due and not self._settled:
            self._consumer.due[self.seq] = self._bus.clock() + self._consumer.d.ack_wait_s


class MemoryPuller:
    """A bound durable consumer of a ``MemoryBus``."""

    def __init__(self, bus: MemoryBus, consumer: _Consumer, stream: str, durable: str) -> None:
        self._bus = bus
        self._consumer = consumer
        self.stream = stream
        self.durable = durable

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:
        """Up to ``batch`` messages; an empty list when none came within ``timeout``."""
        what = f"fetch from {self.stream}/{self.durable}"
        bus, c = self._bus, self._consumer
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        c.waiting += 1
        try:
            while True:
                bus.check("fetch", self.durable, what)
                changed = bus.changed  # taken before looking: a change after the look wakes us
                now = bus.clock()
                got = c.take(batch, now)
                if got:
                    return [MemoryDelivery(bus, c, m, n) for m, n in got]
                left = deadline - loop.time()
                if left <= 0:
                    return []
                if c.due:  # a redelivery falls due: look again then
                    left = min(left, max(min(c.due.values()) - now, 0.001))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await changed.wait()
        finally:
            c.waiting -= 1

    async def unsubscribe(self) -> None:
        return None


class MemoryBus:
    """``types.Bus`` in memory. See the module docstring for what it models."""

    def __init__(self, *, max_payload: int = DEFAULT_MAX_PAYLOAD,
                 clock: Callable[[], float] = time.time, fault: FaultHook | None = None) -> None:
        self.clock = clock
        self.fault = fault
        self._max_payload = max_payload
        self.streams: dict[str, _Stream] = {}
        self.consumers: dict[tuple[str, str], _Consumer] = {}
        self.buckets: dict[str, dict[str, bytes]] = {}
        self.objects: dict[str, dict[str, bytes]] = {}
        self.changed = asyncio.Event()
        self.closed = False
        self._fleet: InMemoryFleetState | None = None

    # ------------------------------------------------------------ internals
    def wake(self) -> None:
        """Let waiting fetches look again (after a publish, a nak, or moving the clock)."""
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def check(self, op: str, target: str, what: str) -> None:
        """Raise what an injected fault or a closed bus makes of ``op``."""
        if self.closed:
            raise errors.closed(what)
        if self.fault is not None and (exc := self.fault(op, target)) is not None:
            raise exc

    def drop(self, st: _Stream, seq: int) -> bool:
        if st.msgs.pop(seq, None) is None:
            return False
        for c in self.consumers.values():
            if c.stream is st:
                c.forget(seq)
        return True

    def _stream(self, name: str, what: str) -> _Stream:
        st = self.streams.get(name)
        if st is None:
            raise errors.not_found(what, "stream not found")
        return st

    # ---------------------------------------------------------------- setup
    async def ensure_stream(self, d: StreamDef) -> None:
        self.check("ensure_stream", d.name, f"create stream {d.name}")
        st = self.streams.get(d.name)
        if st is None:
            self.streams[d.name] = _Stream(d)
            return
        if st.d.retention != d.retention:
            raise errors.refused(f"update stream {d.name}",
                                 "stream configuration update can not change retention policy")
        st.d = d
        st.replicas = d.replicas or st.replicas

    async def ensure_consumer(self, stream: str, d: ConsumerDef) -> None:
        what = f"create consumer {d.durable} on {stream}"
        self.check("ensure_consumer", d.durable, what)
        st = self._stream(stream, what)
        c = self.consumers.get((stream, d.durable))
        if c is None:
            self.consumers[(stream, d.durable)] = _Consumer(st, d)
        else:
            c.d = d

    async def puller(self, stream: str, durable: str) -> MemoryPuller:
        c = self.consumers.get((stream, durable))
        if c is None:
            raise errors.not_found(f"bind to consumer {durable} on {stream}", "consumer not found")
        return MemoryPuller(self, c, stream, durable)

    async def key_value(self, bucket: str, *, replicas: int | None = None) -> MemoryKV:
        return MemoryKV(self, bucket, self.buckets.setdefault(bucket, {}))

    async def object_store(self, bucket: str, *, replicas: int | None = None,
                           ttl_s: float | None = None) -> MemoryObjects:
        return MemoryObjects(self, bucket, self.objects.setdefault(bucket, {}))

    def fleet_state(self, **options: Any) -> contextlib.nullcontext[InMemoryFleetState]:
        """One ``InMemoryFleetState`` per bus (``options`` are JetStream's; ignored)."""
        from matrix_p2p.llm.fleet import InMemoryFleetState

        if self._fleet is None:
            self._fleet = InMemoryFleetState()
        return contextlib.nullcontext(self._fleet)

    # ---------------------------------------------------------------- data path
    @property
    def max_payload(self) -> int:
        return self._max_payload

    async def publish(self, subject: str, data: bytes, *, msg_id: str | None = None,
                      headers: dict[str, str] | None = None, timeout: float = 10.0) -> bool:
        what = f"publish to {subject}"
        self.check("publish", subject, what)
        if len(data) > self._max_payload:
            raise errors.too_large(what, len(data), self._max_payload)
        st = next((s for s in self.streams.values() if s.accepts(subject)), None)
        if st is None:
            raise errors.no_stream(what)
        if st.d.max_msg_size is not None and len(data) > st.d.max_msg_size:
            raise errors.refused(what, "message size exceeds maximum allowed")
        now = self.clock()
        window = st.d.duplicate_window_s or DEFAULT_DUPLICATE_WINDOW_S
        if msg_id is not None:
            if now - st.ids.get(msg_id, -window) < window:
                return True
            st.ids[msg_id] = now
        hdrs = dict(headers or {})
        if msg_id is not None:
            hdrs["Nats-Msg-Id"] = msg_id
        st.last_seq += 1
        st.msgs[st.last_seq] = StoredMsg(seq=st.last_seq, time=now, subject=subject,
                                         data=bytes(data), headers=hdrs)
        self.wake()
        return False

    async def delete_msg(self, stream: str, seq: int) -> bool:
        st = self.streams.get(stream)
        return st is not None and self.drop(st, seq)

    async def next_msg(self, stream: str, seq: int, subject: str = ">") -> StoredMsg | None:
        st = self.streams.get(stream)
        if st is None:
            return None
        return next((m for s, m in st.msgs.items() if s >= seq and subject_matches(subject, m.subject)),
                    None)

    async def stored(self, stream: str, seq: int) -> StoredMsg | None:
        st = self.streams.get(stream)
        return None if st is None else st.msgs.get(seq)

    def iter_stream(self, stream: str, subject: str = ">", *, start: int = 1,
                    end: int | None = None) -> AsyncIterator[StoredMsg]:
        return iter_by_next(self.next_msg, self.stream_bounds, stream, subject, start, end)

    # ---------------------------------------------------------------- status
    async def stream_counts(self, stream: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in getattr(self.streams.get(stream), "msgs", {}).values():
            counts[m.subject] = counts.get(m.subject, 0) + 1
        return counts

    async def stream_msgs(self, stream: str) -> int:
        st = self.streams.get(stream)
        return 0 if st is None else len(st.msgs)

    async def stream_bounds(self, stream: str) -> tuple[int, int]:
        st = self.streams.get(stream)
        if st is None:
            return (0, 0)
        return (next(iter(st.msgs), st.last_seq + 1), st.last_seq)

    async def consumer_stats(self, stream: str, durable: str) -> ConsumerStats | None:
        c = self.consumers.get((stream, durable))
        if c is None:
            return None
        return ConsumerStats(pending=c.unseen(), ack_pending=len(c.due),
                             redelivered=sum(1 for n in c.count.values() if n > 1),
                             waiting=c.waiting, delivered=c.delivered, delivered_seq=c.cursor,
                             ack_floor_seq=c.ack_floor())

    def strand(self, stream: str, durable: str, m: StoredMsg) -> None:
        """Play JetStream's work-queue defects (nats-server #4736, #6905, #7680): the stream
        holds ``m`` (put back if it was removed) and the consumer never delivers it."""
        st = self.streams[stream]
        st.msgs[m.seq] = m
        st.msgs = dict(sorted(st.msgs.items()))
        c = self.consumers[(stream, durable)]
        c.forget(m.seq)
        c.passed.add(m.seq)

    async def close(self) -> None:
        """Later operations fail as on a closed connection; waiting fetches wake up."""
        self.closed = True
        self.wake()


if TYPE_CHECKING:  # mypy checks that this class implements the interface
    def _implements(bus: MemoryBus) -> Bus:
        return bus
