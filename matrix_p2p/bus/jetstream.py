"""The bus on a real broker: NATS JetStream through nats-py.

Every nats call sits inside ``errors.translate`` (a test checks the source),
so callers only ever see ``BusError`` and its subclasses.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js import api

from matrix_p2p.bus.errors import AlreadyExists, NotFound, translate, when_ready
from matrix_p2p.bus.kv import JetStreamKV
from matrix_p2p.bus.objects import JetStreamObjects
from matrix_p2p.bus.types import (
    Bus,
    ConsumerDef,
    ConsumerStats,
    Delivery,
    StoredMsg,
    StreamDef,
    iter_by_next,
)
from matrix_p2p.errors import BusError

if TYPE_CHECKING:
    from matrix_p2p.bus.fleet_kv import KVFleetState
    from matrix_p2p.bus.registry_kv import ReplicaRegistry

log = structlog.get_logger(__name__)

_RETENTION = {"work_queue": api.RetentionPolicy.WORK_QUEUE, "limits": api.RetentionPolicy.LIMITS}


def ack_metadata(reply: str | None) -> tuple[int, int | None]:
    """(times delivered, stream sequence) from a JetStream message's reply subject:
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...`` (9 tokens) or, with a
    domain and account hash, ``$JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>
    .<stream seq>...`` (12 or more). Two fields read where nats-py's ``metadata``
    builds five objects and a datetime per message. (1, None) if it is not one."""
    tokens: list[str] = reply.split(".") if reply else []
    n = len(tokens)
    if n >= 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        at = 4 if n == 9 else 6
        if n == 9 or n >= 11:
            try:
                return int(tokens[at]) or 1, int(tokens[at + 1])
            except ValueError:
                pass
    return 1, None


class JetStreamDelivery:
    """One message from a pull consumer (hashable by identity: the worker keys on it)."""

    __slots__ = ("_msg", "data", "num_delivered", "seq", "subject")

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        self.data: bytes = msg.data
        self.subject: str = msg.subject
        self.num_delivered: int
        self.seq: int | None  # the liveness check of a sink counts it
        self.num_delivered, self.seq = ack_metadata(msg.reply)

    @property
    def headers(self) -> dict[str, str]:
        return dict(self._msg.headers or {})

    async def ack(self) -> None:
        with translate(f"ack of {self.subject}"):
            await self._msg.ack()

    async def ack_sync(self, timeout: float = 5.0) -> None:
        """Ack and wait for the server's confirmation (sinks: no double write on restart)."""
        with translate(f"ack of {self.subject} (confirmed)"):
            await self._msg.ack_sync(timeout=timeout)

    async def nak(self, delay: float | None = None) -> None:
        with translate(f"nak of {self.subject}"):
            await self._msg.nak(delay=delay)

    async def term(self) -> None:
        with translate(f"term of {self.subject}"):
            await self._msg.term()

    async def in_progress(self) -> None:
        with translate(f"in-progress of {self.subject}"):
            await self._msg.in_progress()


_NEXT = "$JS.API.CONSUMER.MSG.NEXT"  # the pull request's subject (default API prefix)
_NO_MORE = ("404", "408")  # no messages, request expired: the request ended, no error


class _PullInbox:
    """The inbox one puller's messages and the server's pull statuses arrive on.

    nats-py calls ``_arrived`` from its subscription's task, in order; ``fetch``
    takes from ``queue`` without a task, a timer and a uuid per message (what
    nats-py's own ``fetch`` pays for each one).
    """

    __slots__ = ("queue", "wake")

    def __init__(self) -> None:
        self.queue: deque[Msg] = deque()
        self.wake = asyncio.Event()

    async def _arrived(self, msg: Msg) -> None:
        self.queue.append(msg)
        self.wake.set()

    async def next(self, deadline: float) -> Msg | None:
        """The next message or status; None once ``deadline`` (loop time) has passed."""
        while not self.queue:
            self.wake.clear()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return None
            try:
                async with asyncio.timeout(left):
                    await self.wake.wait()
            except TimeoutError:
                return None
        return self.queue.popleft()


def _status(msg: Msg) -> str | None:
    """A pull status ("404" no messages, "408" expired, "409" refused, "100" heartbeat);
    None for a message."""
    if msg.data or not msg.headers:
        return None
    return msg.headers.get("Status")


class JetStreamPuller:
    """A durable pull consumer. Fetch from one loop only (concurrent fetches steal).

    Pull requests go out on the connection directly (not through nats-py's
    ``fetch``): a fetch asks for what is there (``no_wait``) and returns once
    the server says there is no more; when nothing is there, it waits for one
    message (a lingering request of batch 1) and then asks for the rest with
    ``no_wait``. So a fetch never holds a message that has arrived while it
    waits for others (nats-py's lingering fetch of N keeps what came until N
    came or the timeout passed), and never has more messages asked for than
    ``batch`` (the caller's free slots).
    """

    def __init__(self, nc: Any, sub: Any, inbox: _PullInbox, stream: str, durable: str) -> None:
        self.nc = nc
        self._sub = sub
        self._inbox = inbox
        self._deliver: str = sub.subject
        self._next = f"{_NEXT}.{stream}.{durable}"
        self.stream = stream
        self.durable = durable
        self._what = f"fetch from {stream}/{durable}"

    @classmethod
    async def bind(cls, nc: Any, stream: str, durable: str) -> JetStreamPuller:
        inbox = _PullInbox()
        with translate(f"bind to consumer {durable} on {stream}"):
            sub = await nc.subscribe(nc.new_inbox(), cb=inbox._arrived, pending_msgs_limit=-1,
                                     pending_bytes_limit=-1)
        return cls(nc, sub, inbox, stream, durable)

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:
        """Up to ``batch`` messages; an empty list when none came within ``timeout``.

        Error handling: other failures (say a 409 while a cluster re-elects the
        consumer's leader, a closed connection) raise ``BusError``: the caller
        backs off and fetches again.
        """
        with translate(self._what):
            msgs = await self._fetch(batch, timeout)
        return [JetStreamDelivery(m) for m in msgs]

    async def _fetch(self, batch: int, timeout: float) -> list[Msg]:
        q = self._inbox.queue
        got: list[Msg] = []
        # what a request that timed out (or was cancelled) delivered late comes first
        while q and len(got) < batch:
            m = q.popleft()
            if _status(m) is None:
                got.append(m)
        if len(got) == batch:
            return got
        deadline = asyncio.get_running_loop().time() + timeout
        refused = await self._pull(batch - len(got), got, deadline, wait=False)
        if got:
            return got
        # nothing there: wait for one message (the server keeps this request until it
        # expires, just before our deadline), then take what else is there at once
        expires_ns = int(max(0.001, timeout - 0.01) * 1e9)
        refused = await self._pull(1, got, deadline, wait=True, expires_ns=expires_ns) or refused
        if got and batch > 1:
            await self._pull(batch - 1, got, deadline, wait=False)
        if not got and refused is not None:
            raise refused
        return got

    async def _pull(self, n: int, got: list[Msg], deadline: float, *, wait: bool,
                    expires_ns: int = 0) -> nats.js.errors.APIError | None:
        """Ask for ``n`` messages and collect them into ``got`` until the request ends
        (all came, a status said no more, or ``deadline``). Returns a 409's error."""
        req = b'{"batch":%d,"expires":%d}' % (n, expires_ns) if wait else \
            b'{"batch":%d,"no_wait":true}' % n
        with translate(self._what):
            await self.nc.publish(self._next, req, reply=self._deliver)
        want = len(got) + n
        while len(got) < want:
            m = await self._inbox.next(deadline)
            if m is None:
                break
            status = _status(m)
            if status is None:
                got.append(m)
            elif status in _NO_MORE:
                break
            elif status != "100":  # a 409 (leader change, too many waiting ...): ended too
                return nats.js.errors.APIError.from_msg(m)
        return None

    async def unsubscribe(self) -> None:
        try:
            with translate(f"unsubscribe from {self.stream}/{self.durable}"):
                await self._sub.unsubscribe()
        except BusError:
            pass  # the connection is already gone; nothing left to release


class _PubAck(msgspec.Struct):
    duplicate: bool = False
    error: dict[str, Any] | None = None


_puback = msgspec.json.Decoder(_PubAck)


class _AckInbox:
    """One wildcard inbox for the PubAcks of every publish on a connection.

    Cheaper than nats-py's ``js.publish`` (a request with a random token and a
    task-spawning ``wait_for`` per message, the reply parsed into a dataclass):
    a counter token, one future, and msgspec to read the PubAck.
    """

    __slots__ = ("_checks", "_lock", "_n", "_prefix", "_waiting", "nc")

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self._prefix = ""
        self._n = 0
        # token -> (future, deadline in loop time); only publishes awaiting their PubAck
        self._waiting: dict[str, tuple[asyncio.Future[Msg], float]] = {}
        self._checks: set[int] = set()  # whole seconds (loop time) a timeout check is due at
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Subscribe to the inbox (once; every publish calls this until it is done)."""
        async with self._lock:
            if not self._prefix:
                with translate("subscribe to the PubAck inbox"):
                    prefix = self.nc.new_inbox() + "."
                    await self.nc.subscribe(prefix + "*", cb=self._arrived)
                self._prefix = prefix

    @property
    def started(self) -> bool:
        return bool(self._prefix)

    async def _arrived(self, msg: Msg) -> None:
        waiting = self._waiting.pop(msg.subject[len(self._prefix):], None)
        if waiting is not None and not waiting[0].done():
            waiting[0].set_result(msg)

    def expect(self, timeout: float) -> tuple[str, str, asyncio.Future[Msg]]:
        """A token, the reply subject to publish with, and the future that gets the
        PubAck, or ``TimeoutError`` after ``timeout`` (up to a second later: one timer per
        second for all publishes, not one per publish). ``forget`` the token after."""
        self._n += 1
        token = str(self._n)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Msg] = loop.create_future()
        deadline = loop.time() + timeout
        self._waiting[token] = (fut, deadline)
        check = math.ceil(deadline)
        if check not in self._checks:
            self._checks.add(check)
            loop.call_at(check, self._expire, check)
        return token, self._prefix + token, fut

    def _expire(self, check: int) -> None:
        self._checks.discard(check)
        # every publish due by ``check`` scheduled this check or an earlier one
        late = [t for t, (_, deadline) in self._waiting.items() if deadline <= check]
        for token in late:
            fut, _ = self._waiting.pop(token)
            if not fut.done():
                fut.set_exception(TimeoutError())

    def forget(self, token: str) -> None:
        self._waiting.pop(token, None)


def _duplicate(msg: Msg) -> bool:
    """Whether the PubAck says the message was a duplicate; raises the broker's refusal."""
    if msg.headers and msg.headers.get("Status") == "503":
        raise nats.js.errors.NoStreamResponseError
    ack = _puback.decode(msg.data)
    if ack.error is not None:
        raise nats.js.errors.APIError.from_error(ack.error)
    return ack.duplicate


def _stored(m: Any) -> StoredMsg:
    hdrs = {k: v for k, v in (m.headers or {}).items() if not k.startswith("Nats-")
            or k == "Nats-Msg-Id"}
    return StoredMsg(seq=int(m.seq or 0), time=m.time.timestamp() if m.time else 0.0,
                     subject=m.subject or "", data=m.data or b"", headers=hdrs)


class JetStreamBus:
    """A JetStream connection with the operations matrix_p2p needs (see ``types.Bus``)."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=10.0)
        self._acks = _AckInbox(nc)

    # ---------------------------------------------------------------- setup
    async def ensure_stream(self, d: StreamDef) -> None:
        """Create or update a stream. Idempotent.

        ``replicas`` (R1, R3 ...) applies when a stream is created or when given;
        None keeps an existing stream's replicas (a sink started without
        ``--replicas`` must not scale an R3 stream down), and creates R1.
        Error handling: set-up calls wait up to ``SETUP_RETRY_S`` for JetStream to
        be ready; then ``BusError``.
        """
        cfg = api.StreamConfig(
            name=d.name, subjects=list(d.subjects), retention=_RETENTION[d.retention],
            storage=api.StorageType.FILE, duplicate_window=d.duplicate_window_s or 0,
            num_replicas=d.replicas,
            max_msg_size=-1 if d.max_msg_size is None else d.max_msg_size,
        )
        what = f"stream {d.name}"
        try:
            with translate(f"create stream {d.name}"):
                await when_ready(what, lambda: self.js.add_stream(cfg))
            return
        except AlreadyExists:
            pass
        if cfg.num_replicas is None:
            with translate(f"read stream {d.name}"):
                info = await when_ready(what, lambda: self.js.stream_info(d.name))
            cfg.num_replicas = info.config.num_replicas
        with translate(f"update stream {d.name}"):
            await when_ready(what, lambda: self.js.update_stream(cfg))

    async def ensure_consumer(self, stream: str, d: ConsumerDef) -> None:
        """Create or update a durable pull consumer: explicit ack, no delivery limit."""
        cfg = api.ConsumerConfig(
            name=d.durable, durable_name=d.durable, filter_subject=d.filter_subject,
            ack_policy=api.AckPolicy.EXPLICIT, ack_wait=d.ack_wait_s,
            max_deliver=-1,  # delivery limits are ours: the task ends as failed, not silently
            max_ack_pending=d.max_ack_pending, max_waiting=d.max_waiting,
        )
        with translate(f"create consumer {d.durable} on {stream}"):
            await when_ready(f"consumer {d.durable}", lambda: self.js.add_consumer(stream, cfg))

    async def puller(self, stream: str, durable: str) -> JetStreamPuller:
        with translate(f"bind to consumer {durable} on {stream}"):
            return await JetStreamPuller.bind(self.nc, stream, durable)

    async def key_value(self, bucket: str, *, replicas: int | None = None) -> JetStreamKV:
        """Open the bucket (history 1), creating it if needed."""
        try:
            with translate(f"create key-value bucket {bucket}"):
                kv = await when_ready(f"bucket {bucket}", lambda: self.js.create_key_value(
                    bucket=bucket, history=1, replicas=replicas or 1))
        except AlreadyExists:  # there with another configuration: use it as it is
            with translate(f"open key-value bucket {bucket}"):
                kv = await self.js.key_value(bucket)
        return JetStreamKV(kv, bucket)

    async def object_store(self, bucket: str, *, replicas: int | None = None,
                           ttl_s: float | None = None) -> JetStreamObjects:
        """Open the object bucket, creating it if needed (see ``bus.objects``)."""
        return await JetStreamObjects.open(self.js, bucket, replicas=replicas, ttl_s=ttl_s)

    def fleet_state(self, **options: Any) -> KVFleetState:
        """LLM endpoint state shared by every worker on this broker (not started:
        ``async with bus.fleet_state() as fleet``). Options: see ``KVFleetState``."""
        from matrix_p2p.bus.fleet_kv import KVFleetState

        return KVFleetState(self.js, **options)

    def replica_registry(self, **options: Any) -> ReplicaRegistry:
        """The LLM replicas that registered themselves (``llm-register``); not started:
        ``async with bus.replica_registry() as reg``. Options: see ``ReplicaRegistry``."""
        from matrix_p2p.bus.registry_kv import ReplicaRegistry

        return ReplicaRegistry(self.js, **options)

    # ---------------------------------------------------------------- data path
    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        msg_id: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> bool:
        """Publish to JetStream and await its PubAck. Returns True if it was a duplicate."""
        hdrs = dict(headers) if headers else {}
        if msg_id is not None:
            hdrs["Nats-Msg-Id"] = msg_id
        if not self._acks.started:
            await self._acks.start()
        token, reply, fut = self._acks.expect(timeout)
        try:
            with translate(f"publish to {subject}", size=len(data), limit=self.max_payload):
                await self.nc.publish(subject, data, reply=reply, headers=hdrs or None)
                return _duplicate(await fut)
        finally:
            self._acks.forget(token)

    @property
    def max_payload(self) -> int:
        """The largest message the connected server accepts (its INFO ``max_payload``)."""
        return int(self.nc.max_payload or 1024 * 1024)

    async def delete_msg(self, stream: str, seq: int) -> bool:
        """Remove one stored message; False if it was not there."""
        try:
            with translate(f"delete {stream} #{seq}"):
                return bool(await self.js.delete_msg(stream, seq))
        except NotFound:
            return False

    async def next_msg(self, stream: str, seq: int, subject: str = ">") -> StoredMsg | None:
        """The first stored message at or after ``seq`` matching ``subject``; None past the end."""
        try:
            with translate(f"read {stream} from #{seq}"):
                m = await self.js.get_msg(stream, seq=max(1, seq), subject=subject, next=True)
        except NotFound:
            return None
        return _stored(m)

    async def stored(self, stream: str, seq: int) -> StoredMsg | None:
        """One stored message by sequence, with its time; None if it is not there."""
        try:
            with translate(f"read {stream} #{seq}"):
                m = await self.js.get_msg(stream, seq)
        except NotFound:
            return None
        return _stored(m)

    def iter_stream(
        self, stream: str, subject: str = ">", *, start: int = 1, end: int | None = None
    ) -> AsyncIterator[StoredMsg]:
        """Stored messages in sequence order (gaps from deletions are skipped)."""
        return iter_by_next(self.next_msg, self.stream_bounds, stream, subject, start, end)

    # ---------------------------------------------------------------- status
    async def _stream_info(self, stream: str, subjects_filter: str | None = None) -> Any:
        """The stream's info; None if there is no such stream."""
        try:
            with translate(f"read stream {stream}"):
                return await self.js.stream_info(stream, subjects_filter=subjects_filter)
        except NotFound:
            return None

    async def stream_counts(self, stream: str) -> dict[str, int]:
        """Messages per subject in a stream."""
        info = await self._stream_info(stream, subjects_filter=">")
        return dict(info.state.subjects or {}) if info is not None else {}

    async def stream_msgs(self, stream: str) -> int:
        info = await self._stream_info(stream)
        return int(info.state.messages) if info is not None else 0

    async def stream_bounds(self, stream: str) -> tuple[int, int]:
        info = await self._stream_info(stream)
        if info is None:
            return (0, 0)
        return int(info.state.first_seq), int(info.state.last_seq)

    async def consumer_stats(self, stream: str, durable: str) -> ConsumerStats | None:
        try:
            with translate(f"read consumer {durable} on {stream}"):
                info = await self.js.consumer_info(stream, durable)
        except NotFound:
            return None
        return ConsumerStats(
            pending=int(info.num_pending or 0),
            ack_pending=int(info.num_ack_pending or 0),
            redelivered=int(info.num_redelivered or 0),
            waiting=int(info.num_waiting or 0),
            delivered=int(info.delivered.consumer_seq or 0) if info.delivered else 0,
            delivered_seq=int(info.delivered.stream_seq or 0) if info.delivered else 0,
            ack_floor_seq=int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0,
        )

    async def close(self) -> None:
        """Drain (flush pending publishes and acks) and close. Safe to call twice.

        Error handling: a drain that fails or takes over 10 s is logged and the
        connection closed without it.
        """
        if self.nc.is_closed:
            return
        try:
            with translate("drain the NATS connection"):
                await asyncio.wait_for(self.nc.drain(), timeout=10.0)
        except BusError as exc:
            log.warning("bus.drain_failed", error=str(exc))
            with translate("close the NATS connection"):
                await self.nc.close()


if TYPE_CHECKING:  # mypy checks that this class implements the interface
    def _implements(bus: JetStreamBus) -> Bus:
        return bus
