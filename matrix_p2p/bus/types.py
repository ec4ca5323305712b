"""What the runtime codes against: our message types and the bus interface.

No nats here. ``jetstream.JetStreamBus`` implements these protocols on a real
broker and ``memory.MemoryBus`` in process (unit tests); both raise only
``BusError`` subclasses, with the one-line messages built in ``bus.errors``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

import msgspec

from matrix_p2p.errors import BusError

if TYPE_CHECKING:
    from matrix_p2p.llm.fleet import FleetState


class ConnectOptions(msgspec.Struct, kw_only=True):
    """How to reach NATS. Secrets come from flags or the environment, never from logs."""

    url: str = "nats://127.0.0.1:4222"
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds: str | None = None  # a .creds file (JWT + NKey seed)
    nkey: str | None = None  # an NKey seed file
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    name: str = "matrix_p2p"

    @classmethod
    def from_env(cls, **overrides: Any) -> ConnectOptions:
        env = os.environ
        values: dict[str, Any] = {
            "url": env.get("MX_NATS_URL"),
            "user": env.get("MX_NATS_USER"),
            "password": env.get("MX_NATS_PASSWORD"),
            "token": env.get("MX_NATS_TOKEN"),
            "creds": env.get("MX_NATS_CREDS"),
            "nkey": env.get("MX_NATS_NKEY"),
            "tls_ca": env.get("MX_NATS_TLS_CA"),
            "tls_cert": env.get("MX_NATS_TLS_CERT"),
            "tls_key": env.get("MX_NATS_TLS_KEY"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**{k: v for k, v in values.items() if v is not None})

    def safe_url(self) -> str:
        """The URL with any userinfo removed, for messages and logs."""
        scheme, sep, rest = self.url.partition("://")
        if not sep:
            return self.url
        return f"{scheme}://{rest.rpartition('@')[2]}"


class PayloadTooLargeError(BusError):
    """The broker refuses a message this big (its ``max_payload``)."""


class StreamDef(msgspec.Struct, frozen=True, kw_only=True):
    """A stream as the runtime wants it. ``replicas`` None keeps an existing
    stream's replicas (and creates R1); ``duplicate_window_s`` None is the
    broker's default window; ``max_msg_size`` None is no per-stream limit."""

    name: str
    subjects: list[str]
    retention: Literal["work_queue", "limits"]
    duplicate_window_s: float | None
    replicas: int | None
    max_msg_size: int | None = None


class ConsumerDef(msgspec.Struct, frozen=True, kw_only=True):
    """A durable pull consumer with explicit acks and no delivery limit (ours are
    counted by the runtime, so a task ends as failed rather than vanishing)."""

    durable: str
    filter_subject: str | None
    ack_wait_s: float
    max_ack_pending: int
    max_waiting: int | None


class StoredMsg(msgspec.Struct, frozen=True):
    """A message read back from a stream by sequence (dead-letter and replay tools)."""

    seq: int
    time: float  # when the stream stored it (Unix seconds)
    subject: str
    data: bytes
    headers: dict[str, str]


class ConsumerStats(msgspec.Struct):
    """A durable consumer's counters, and where it stands in its stream (``liveness``)."""

    pending: int  # stored, not yet delivered
    ack_pending: int  # delivered, not yet acked
    redelivered: int
    waiting: int
    delivered: int = 0  # deliveries so far, redeliveries included (the consumer's sequence)
    delivered_seq: int = 0  # the stream sequence it last delivered
    ack_floor_seq: int = 0  # the stream sequence up to which everything is acked


class Delivery(Protocol):
    """One message from a pull consumer. Used as a dict key: hashable by identity.

    ``ack``/``nak``/``term`` settle it (a second settle raises ``BusError``);
    ``in_progress`` extends its ack wait and may be repeated.
    """

    data: bytes
    subject: str
    num_delivered: int

    @property
    def headers(self) -> dict[str, str]: ...

    @property
    def seq(self) -> int | None:
        """Its stream sequence (None where the broker did not say)."""

    async def ack(self) -> None: ...

    async def ack_sync(self, timeout: float = 5.0) -> None:
        """Ack and wait for the server's confirmation (sinks: no double write on restart)."""

    async def nak(self, delay: float | None = None) -> None: ...

    async def term(self) -> None: ...

    async def in_progress(self) -> None: ...


class Puller(Protocol):
    """A durable pull consumer. Fetch from one loop only (concurrent fetches steal)."""

    stream: str
    durable: str

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:
        """Up to ``batch`` messages; an empty list when none came within ``timeout``."""

    async def unsubscribe(self) -> None: ...


class KeyValue(Protocol):
    """Create-once keys (the record that a task id was submitted)."""

    async def create(self, key: str, value: bytes = b"1") -> bool:
        """True if the key is new; False if it was already there."""

    async def exists(self, key: str) -> bool: ...

    async def get(self, key: str) -> bytes | None:
        """The key's value; None if it was never written (or deleted)."""


class ObjectStore(Protocol):
    """Large values by name (offloaded envelope fields), any size: chunked by the bus."""

    async def put(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name``, replacing what was there."""

    async def get(self, name: str) -> bytes | None:
        """The stored bytes; None if there is no such object (or it was deleted)."""

    async def delete(self, name: str) -> bool:
        """Remove the object entirely; False if it was not there."""


class Bus(Protocol):
    """Streams, durable pull consumers, publish with dedup, key-value, stream reads."""

    @property
    def max_payload(self) -> int:
        """The largest message the broker accepts."""

    async def ensure_stream(self, d: StreamDef) -> None:
        """Create or update the stream. Idempotent."""

    async def ensure_consumer(self, stream: str, d: ConsumerDef) -> None:
        """Create or update the durable consumer. Idempotent."""

    async def puller(self, stream: str, durable: str) -> Puller: ...

    async def key_value(self, bucket: str, *, replicas: int | None = None) -> KeyValue: ...

    async def object_store(self, bucket: str, *, replicas: int | None = None,
                           ttl_s: float | None = None) -> ObjectStore:
        """Open the object bucket, creating it (objects older than ``ttl_s`` expire)."""

    def fleet_state(self, **options: Any) -> contextlib.AbstractAsyncContextManager[FleetState]:
        """LLM endpoint state shared by every worker on this bus (``async with``)."""

    async def publish(self, subject: str, data: bytes, *, msg_id: str | None = None,
                      headers: dict[str, str] | None = None, timeout: float = 10.0) -> bool:
        """Publish and await the stream's ack. True if it was a duplicate (``msg_id``)."""

    async def delete_msg(self, stream: str, seq: int) -> bool:
        """Remove one stored message; False if it was not there."""

    async def next_msg(self, stream: str, seq: int, subject: str = ">") -> StoredMsg | None:
        """The first stored message at or after ``seq`` matching ``subject``; None past the end."""

    async def stored(self, stream: str, seq: int) -> StoredMsg | None:
        """One stored message by sequence; None if it is not there."""

    def iter_stream(self, stream: str, subject: str = ">", *, start: int = 1,
                    end: int | None = None) -> AsyncIterator[StoredMsg]:
        """Stored messages in sequence order (gaps from deletions are skipped)."""

    async def stream_counts(self, stream: str) -> dict[str, int]:
        """Messages per subject; empty for a missing stream."""

    async def stream_msgs(self, stream: str) -> int:
        """Messages stored; 0 for a missing stream."""

    async def consumer_stats(self, stream: str, durable: str) -> ConsumerStats | None:
        """None for a missing consumer."""

    async def stream_bounds(self, stream: str) -> tuple[int, int]:
        """(first, last) sequence; (0, 0) for a missing stream."""

    async def close(self) -> None:
        """Flush and close. Safe to call twice."""


async def iter_by_next(
    next_msg: Callable[[str, int, str], Awaitable[StoredMsg | None]],
    bounds: Callable[[str], Awaitable[tuple[int, int]]],
    stream: str, subject: str, start: int, end: int | None,
) -> AsyncIterator[StoredMsg]:
    """``iter_stream`` for any bus: walk ``next_msg`` up to ``end`` (the last
    sequence now when None), so that messages stored meanwhile do not loop forever."""
    if end is None:
        end = (await bounds(stream))[1]
    seq = start
    while seq <= end:
        m = await next_msg(stream, seq, subject)
        if m is None or m.seq > end:
            return
        yield m
        seq = m.seq + 1
