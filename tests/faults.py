"""A bus that breaks on cue: deterministic faults at named points of a hop, on any bus.

``FaultyBus(inner, Fault(...), ...)`` delegates every call to ``inner`` (a
``MemoryBus`` or a ``JetStreamBus`` on a real nats-server) and, at these
points, asks its faults what to do:

=============  ===========================================================
point          when
=============  ===========================================================
``publish``    before a publish leaves (the broker never sees it)
``published``  after the broker stored it, before the caller sees the PubAck
``ack``        before an ack (``ack`` and ``ack_sync``) leaves
``nak``        before a nak; ``term`` before a term
``fetch``      before a fetch
``kv.create``  before a key-value create; ``kv.created`` after it
``obj.put``    before an object store put; ``obj.delete`` before a delete
=============  ===========================================================

An object's task is the part of its name before the last ``/`` (offloaded
objects are named ``<task id>/<digest>``), so a fault can name the task whose
objects it breaks. ``record_fsyncs`` adds every ``os.fsync`` to the trace as an
``fsync`` step on the file's name, so that a test can assert the order of
publishes, fsyncs, deletes and acks (``order``).

A fault matches a point, optionally a subject (a NATS pattern), a task id and
a hop (both read from the envelope in the message: for ``publish`` the next
envelope, for ``ack`` the input), skips its first ``skip`` matches and fires
``times`` times. It then does one of:

- ``"crash"``: raises ``Crash`` (a ``BaseException``: no ``except Exception``
  in the product swallows it), and the bus goes dead: every later call raises
  ``BusError`` like a closed connection, so the crashed worker settles nothing
  more, as after ``kill -9``. The test then starts a fresh worker on the inner
  bus, on the same durable consumer, and that one resumes.
- ``"fail"``: raises a ``BusError`` (the broker refused or timed out); the
  caller goes on.

``trace`` records every data-path call (point, subject, task, hop, delivery
count) so that a broken invariant can show the history of the task it names
(``tests/invariants.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import msgspec

from matrix_p2p import envelope
from matrix_p2p.bus import (
    Bus,
    ConsumerDef,
    ConsumerStats,
    Delivery,
    KeyValue,
    ObjectStore,
    Puller,
    StoredMsg,
    StreamDef,
)
from matrix_p2p.bus import errors as bus_errors
from matrix_p2p.bus.memory import subject_matches
from matrix_p2p.envelope import EnvelopeError

Point = Literal["publish", "published", "ack", "nak", "term", "fetch", "kv.create", "kv.created",
                "obj.put", "obj.delete"]


class Crash(BaseException):
    """The process stops here, abruptly. Never caught by the product's ``except Exception``."""


class Fault(msgspec.Struct, kw_only=True):
    point: Point
    do: Literal["crash", "fail"] = "crash"
    subject: str | None = None  # a NATS subject pattern
    task: str | None = None
    hop: int | None = None
    skip: int = 0
    times: int = 1
    seen: int = 0
    fired: int = 0

    def matches(self, point: str, subject: str, task: str | None, hop: int | None) -> bool:
        if point != self.point or (self.subject is not None and not subject_matches(self.subject, subject)):
            return False
        return (self.task is None or task == self.task) and (self.hop is None or hop == self.hop)

    def describe(self) -> str:
        where = " ".join(f"{k}={v}" for k, v in (("subject", self.subject), ("task", self.task),
                                                  ("hop", self.hop)) if v is not None)
        return f"{self.do} at {self.point} {where}".strip()


class Step(msgspec.Struct, frozen=True):
    """One traced call: what happened to which task."""

    point: str
    subject: str
    task: str | None
    hop: int | None
    delivery: int | None = None
    fault: str | None = None  # what was injected here

    def __str__(self) -> str:
        d = f" delivery {self.delivery}" if self.delivery else ""
        f = f" <- injected {self.fault}" if self.fault else ""
        return f"{self.point} {self.subject} hop {self.hop}{d}{f}"


def peek(data: bytes) -> tuple[str | None, int | None]:
    """(task id, hop) of an envelope, or (None, None) for anything else."""
    try:
        t = envelope.decode(data)
    except EnvelopeError:
        return None, None
    return t.id, t.hop


class FaultyBus:
    """``Bus`` over ``inner`` with the faults given. See the module docstring."""

    def __init__(self, inner: Bus, *faults: Fault, trace: list[Step] | None = None,
                 ack_wait_s: float | None = None) -> None:
        self.inner = inner
        self.ack_wait_s = ack_wait_s  # caps the ack_wait of consumers set up through this bus
        self.faults = list(faults)
        self.trace: list[Step] = [] if trace is None else trace
        self.dead = False
        self.fired = asyncio.Event()  # set when any fault fired
        self._stepped = asyncio.Event()

    def check(self, point: str, subject: str, data: bytes | None, delivery: int | None = None,
              *, task: str | None = None) -> None:
        hop: int | None = None
        if data is not None:
            task, hop = peek(data)
        if self.dead:
            raise bus_errors.closed(f"{point} {subject} (after the crash)")
        injected: Fault | None = None
        for f in self.faults:
            if f.fired < f.times and f.matches(point, subject, task, hop):
                f.seen += 1
                if f.seen > f.skip:
                    f.fired += 1
                    injected = f
                    break
        self.record(Step(point, subject, task, hop, delivery,
                         injected.describe() if injected else None))
        if injected is None:
            return
        self.fired.set()
        if injected.do == "crash":
            self.dead = True
            raise Crash(injected.describe())
        raise bus_errors.failed(f"{point} {subject}", f"injected fault ({injected.describe()})")

    def record(self, step: Step) -> None:
        self.trace.append(step)
        self._stepped.set()

    async def wait_for(self, cond: Callable[[list[Step]], bool], what: str, within_s: float = 5.0) -> None:
        """Wait (woken by each traced call, no polling) until ``cond(trace)`` holds."""
        try:
            async with asyncio.timeout(within_s):
                while not cond(self.trace):
                    self._stepped.clear()
                    await self._stepped.wait()
        except TimeoutError:
            tail = "\n  ".join(str(s) for s in self.trace[-20:])
            raise AssertionError(f"no {what} within {within_s}s; last calls:\n  {tail}") from None

    def history(self, task: str) -> list[Step]:
        return [s for s in self.trace if s.task == task]

    def order(self, *points: str) -> list[str]:
        """The trace as ``"<point> <task or subject>"`` lines, only the ``points`` given:
        what an ordering test compares (``fsync`` steps name the file)."""
        return [f"{s.point} {s.task if s.task is not None else s.subject}"
                for s in self.trace if s.point in points]

    # ------------------------------------------------------------ data path
    @property
    def max_payload(self) -> int:
        return self.inner.max_payload

    async def publish(self, subject: str, data: bytes, *, msg_id: str | None = None,
                      headers: dict[str, str] | None = None, timeout: float = 10.0) -> bool:
        self.check("publish", subject, data)
        dup = await self.inner.publish(subject, data, msg_id=msg_id, headers=headers, timeout=timeout)
        self.check("published", subject, data)
        return dup

    async def puller(self, stream: str, durable: str) -> Puller:
        return FaultyPuller(self, await self.inner.puller(stream, durable))

    async def key_value(self, bucket: str, *, replicas: int | None = None) -> KeyValue:
        return FaultyKV(self, await self.inner.key_value(bucket, replicas=replicas))

    async def object_store(self, bucket: str, *, replicas: int | None = None,
                           ttl_s: float | None = None) -> ObjectStore:
        return FaultyObjects(self, await self.inner.object_store(bucket, replicas=replicas,
                                                                  ttl_s=ttl_s))

    # ------------------------------------------------------------ pass-through
    async def ensure_stream(self, d: StreamDef) -> None:
        await self.inner.ensure_stream(d)

    async def ensure_consumer(self, stream: str, d: ConsumerDef) -> None:
        if self.ack_wait_s is not None and d.ack_wait_s > self.ack_wait_s:
            # e.g. a sink's results consumer (30 s): a crash test on the real broker waits 1 s
            d = msgspec.structs.replace(d, ack_wait_s=self.ack_wait_s)
        await self.inner.ensure_consumer(stream, d)

    def fleet_state(self, **options: Any) -> contextlib.AbstractAsyncContextManager[Any]:
        return self.inner.fleet_state(**options)

    async def delete_msg(self, stream: str, seq: int) -> bool:
        return await self.inner.delete_msg(stream, seq)

    async def next_msg(self, stream: str, seq: int, subject: str = ">") -> StoredMsg | None:
        return await self.inner.next_msg(stream, seq, subject)

    async def stored(self, stream: str, seq: int) -> StoredMsg | None:
        return await self.inner.stored(stream, seq)

    def iter_stream(self, stream: str, subject: str = ">", *, start: int = 1,
                    end: int | None = None) -> AsyncIterator[StoredMsg]:
        return self.inner.iter_stream(stream, subject, start=start, end=end)

    async def stream_counts(self, stream: str) -> dict[str, int]:
        return await self.inner.stream_counts(stream)

    async def stream_msgs(self, stream: str) -> int:
        return await self.inner.stream_msgs(stream)

    async def consumer_stats(self, stream: str, durable: str) -> ConsumerStats | None:
        return await self.inner.consumer_stats(stream, durable)

    async def stream_bounds(self, stream: str) -> tuple[int, int]:
        return await self.inner.stream_bounds(stream)

    async def close(self) -> None:
        """The inner bus belongs to the test: it closes it."""


class FaultyPuller:
    def __init__(self, bus: FaultyBus, inner: Puller) -> None:
        self._bus = bus
        self._inner = inner
        self.stream = inner.stream
        self.durable = inner.durable

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:
        self._bus.check("fetch", self.durable, None)
        got = await self._inner.fetch(batch, timeout)
        if self._bus.dead:  # crashed while this fetch waited: nobody will settle these
            return []
        for d in got:
            task, hop = peek(d.data)
            self._bus.record(Step("delivered", d.subject, task, hop, d.num_delivered))
        return [FaultyDelivery(self._bus, d) for d in got]

    async def unsubscribe(self) -> None:
        await self._inner.unsubscribe()


class FaultyDelivery:
    """A delivery whose settling goes through the faults (hashable by identity)."""

    def __init__(self, bus: FaultyBus, inner: Delivery) -> None:
        self._bus = bus
        self._inner = inner
        self.data = inner.data
        self.subject = inner.subject
        self.num_delivered = inner.num_delivered
        self.seq = inner.seq

    @property
    def headers(self) -> dict[str, str]:
        return self._inner.headers

    def _check(self, point: str) -> None:
        self._bus.check(point, self.subject, self.data, self.num_delivered)

    async def ack(self) -> None:
        self._check("ack")
        await self._inner.ack()

    async def ack_sync(self, timeout: float = 5.0) -> None:
        self._check("ack")
        await self._inner.ack_sync(timeout)

    async def nak(self, delay: float | None = None) -> None:
        self._check("nak")
        await self._inner.nak(delay)

    async def term(self) -> None:
        self._check("term")
        await self._inner.term()

    async def in_progress(self) -> None:
        if self._bus.dead:
            raise bus_errors.closed("in-progress (after the crash)")
        await self._inner.in_progress()


class FaultyKV:
    def __init__(self, bus: FaultyBus, inner: KeyValue) -> None:
        self._bus = bus
        self._inner = inner

    async def create(self, key: str, value: bytes = b"1") -> bool:
        self._bus.check("kv.create", key, None)
        new = await self._inner.create(key, value)
        self._bus.check("kv.created", key, None)
        return new

    async def exists(self, key: str) -> bool:
        if self._bus.dead:
            raise bus_errors.closed(f"key-value get {key} (after the crash)")
        return await self._inner.exists(key)


class FaultyObjects:
    """An object bucket whose puts and deletes go through the faults (task: the name
    without its digest)."""

    def __init__(self, bus: FaultyBus, inner: ObjectStore) -> None:
        self._bus = bus
        self._inner = inner

    async def put(self, name: str, data: bytes) -> None:
        self._bus.check("obj.put", name, None, task=name.rsplit("/", 1)[0])
        await self._inner.put(name, data)

    async def get(self, name: str) -> bytes | None:
        if self._bus.dead:
            raise bus_errors.closed(f"object get {name} (after the crash)")
        return await self._inner.get(name)

    async def delete(self, name: str) -> bool:
        self._bus.check("obj.delete", name, None, task=name.rsplit("/", 1)[0])
        return await self._inner.delete(name)


def record_fsyncs(monkeypatch: Any, bus: FaultyBus) -> None:
    """Every ``os.fsync`` from now on (a sink's commit, a sidecar) is a step in ``bus``'s
    trace: point ``fsync``, subject the file's name."""
    import os

    real = os.fsync

    def fsync(fd: int) -> None:
        real(fd)
        try:
            name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            name = f"fd {fd}"
        bus.record(Step("fsync", name, None, None))

    monkeypatch.setattr(os, "fsync", fsync)


def has_crash(exc: BaseException) -> bool:
    if isinstance(exc, Crash):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(has_crash(e) for e in exc.exceptions)
    return False


async def until_crash(run: Awaitable[Any], bus: FaultyBus, within_s: float = 10.0) -> None:
    """Await ``run`` (a worker, a sink, a submit) until an injected ``Crash`` stops it.

    Fails at once when ``run`` ends without crashing, after ``within_s`` when the
    fault never fired (the point it names was never reached), and when whatever
    ``run`` left running does not end once the crash has cancelled it."""
    task = asyncio.ensure_future(run)
    done, _ = await asyncio.wait({task}, timeout=within_s)
    if not done:
        pending = [f.describe() for f in bus.faults if f.fired < f.times]
        task.cancel()
        await asyncio.wait({task}, timeout=5.0)
        if pending:
            raise AssertionError(f"no crash within {within_s}s: never reached {pending}")
        raise AssertionError(f"the crash fired but what crashed had not ended {within_s}s later "
                             f"(a cancellation lost?); {'stuck' if not task.done() else 'ended'} "
                             f"after a cancel. Tasks:\n{task_stacks()}")
    exc = task.exception()
    if exc is not None and has_crash(exc):
        return
    if exc is not None:
        raise exc
    raise AssertionError("it ended without reaching the crash point")


def task_stacks() -> str:
    """Where every asyncio task of this loop is waiting (for a stuck-shutdown message)."""
    import io

    out = io.StringIO()
    for t in asyncio.all_tasks():
        t.print_stack(limit=6, file=out)
    return out.getvalue()
