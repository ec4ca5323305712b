"""The bus on a real broker: NATS JetStream through nats-py.

Every nats call sits inside ``errors.translate`` (a test checks the source),
so callers only ever see ``BusError`` and its subclasses.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import structlog
from nats.js import api

from matrix_p2p.bus.errors import AlreadyExists, NotFound, translate, when_ready
from matrix_p2p.bus.js_publish import AckInbox, duplicate
from matrix_p2p.bus.js_pull import JetStreamDelivery, JetStreamPuller, ack_metadata
from matrix_p2p.bus.kv import JetStreamKV
from matrix_p2p.bus.objects import JetStreamObjects
from matrix_p2p.bus.types import (
    Bus,
    ConsumerDef,
    ConsumerStats,
    StoredMsg,
    StreamDef,
    iter_by_next,
)
from matrix_p2p.errors import BusError

__all__ = ["JetStreamBus", "JetStreamDelivery", "JetStreamPuller", "ack_metadata"]

if TYPE_CHECKING:
    from matrix_p2p.bus.fleet_kv import KVFleetState
    from matrix_p2p.bus.registry_kv import ReplicaRegistry

log = structlog.get_logger(__name__)

_RETENTION = {"work_queue": api.RetentionPolicy.WORK_QUEUE, "limits": api.RetentionPolicy.LIMITS}


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
        self._acks = AckInbox(nc)

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
                return duplicate(await fut)
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
