"""The broker edge: the only package that imports ``nats``.

Everything else speaks in our types: ``Bus`` (streams, consumers, publish,
key-value), ``Puller`` (one durable pull consumer, fetched by one loop) and
``Delivery`` (one message: data, delivery count, ack/nak/term/in_progress).
NATS exceptions become ``BusError`` with a one-line message.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.js import api

from matrix_p2p.errors import BusError
from matrix_p2p.naming import Names

if TYPE_CHECKING:
    from matrix_p2p.bus.fleet_kv import KVFleetState

log = structlog.get_logger(__name__)

DUPLICATE_WINDOW_S = 600.0
SETUP_RETRY_S = 30.0  # how long set-up calls wait for JetStream to become ready
_T = TypeVar("_T")
# what JetStream answers while it is not ready: a cluster electing its meta leader,
# a broker restarting (set-up calls retry these; the data path has its own redelivery)
_NOT_READY = (TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError)


async def _when_ready(what: str, op: Callable[[], Awaitable[_T]]) -> _T:
    """Run a JetStream set-up call, retrying with backoff while JetStream is not ready.

    Error handling: after ``SETUP_RETRY_S`` the last error propagates (the caller
    turns it into a ``BusError``); every retry is logged.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETUP_RETRY_S
    delay = 0.2
    while True:
        try:
            return await op()
        except _NOT_READY as exc:
            if loop.time() + delay > deadline:
                raise
            log.warning("bus.jetstream_not_ready", what=what, error=_explain(exc),
                        retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3.0)  # hop msg-ids dedup a republish within this window
DLQ_HEADROOM = 16 * 1024  # bytes left for headers when dead-lettering a near-max message


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


class StoredMsg(msgspec.Struct, frozen=True):
    """A message read back from a stream by sequence (dead-letter and replay tools)."""

    seq: int
    time: float  # when the stream stored it (Unix seconds)
    subject: str
    data: bytes
    headers: dict[str, str]


class Delivery:
    """One message from a pull consumer."""

    __slots__ = ("_msg", "data", "num_delivered", "subject")

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        self.data: bytes = msg.data
        self.subject: str = msg.subject
        try:
            self.num_delivered: int = msg.metadata.num_delivered or 1
        except Exception:  # not a JetStream message (cannot happen on a pull consumer)
            self.num_delivered = 1

    @property
    def headers(self) -> dict[str, str]:
        return dict(self._msg.headers or {})

    async def ack(self) -> None:
        await self._msg.ack()

    async def ack_sync(self, timeout: float = 5.0) -> None:
        """Ack and wait for the server's confirmation (sinks: no double write on restart)."""
        try:
            await self._msg.ack_sync(timeout=timeout)
        except nats.errors.Error as exc:
            raise BusError(f"ack not confirmed: {exc}") from None

    async def nak(self, delay: float | None = None) -> None:
        await self._msg.nak(delay=delay)

    async def term(self) -> None:
        await self._msg.term()

    async def in_progress(self) -> None:
        await self._msg.in_progress()


class Puller:
    """A durable pull consumer. Fetch from one loop only (concurrent fetches steal)."""

    def __init__(self, sub: Any, stream: str, durable: str) -> None:
        self._sub = sub
        self.stream = stream
        self.durable = durable

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:
        """Up to ``batch`` messages; an empty list when none came within ``timeout``."""
        try:
            msgs = await self._sub.fetch(batch=batch, timeout=timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except nats.errors.ConnectionClosedError:
            raise BusError("NATS connection closed") from None
        except nats.errors.Error as exc:
            # e.g. 503 while a cluster re-elects the consumer's leader after a node died:
            # the caller's loop backs off and fetches again
            raise BusError(f"fetch from {self.stream}/{self.durable} failed: "
                           f"{_explain(exc)}") from None
        return [Delivery(m) for m in msgs if m.data is not None]

    async def unsubscribe(self) -> None:
        try:
            await self._sub.unsubscribe()
        except nats.errors.Error:
            pass  # the connection is already gone; nothing left to release


class ConsumerStats(msgspec.Struct):
    pending: int
    ack_pending: int
    redelivered: int
    waiting: int


class SubmittedKV:
    """Create-once keys: the record that a task id was submitted."""

    def __init__(self, kv: Any) -> None:
        self._kv = kv

    async def create(self, key: str, value: bytes = b"1") -> bool:
        """True if the key is new; False if it was already there."""
        try:
            await self._kv.create(key, value)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        except nats.js.errors.BadRequestError as exc:
            if "wrong last sequence" in str(exc).lower():
                return False
            raise BusError(f"key-value create {key!r} failed: {exc}") from None
        except (TimeoutError, nats.errors.TimeoutError):
            raise BusError(f"key-value create {key!r} timed out") from None
        return True

    async def exists(self, key: str) -> bool:
        try:
            await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return False
        except (TimeoutError, nats.errors.TimeoutError):
            raise BusError(f"key-value get {key!r} timed out") from None
        return True

    async def delete(self, key: str) -> None:
        await self._kv.delete(key)


def _stored(m: Any) -> StoredMsg:
    hdrs = {k: v for k, v in (m.headers or {}).items() if not k.startswith("Nats-")
            or k == "Nats-Msg-Id"}
    return StoredMsg(seq=int(m.seq or 0), time=m.time.timestamp() if m.time else 0.0,
                     subject=m.subject or "", data=m.data or b"", headers=hdrs)


def _tls_context(opts: ConnectOptions) -> ssl.SSLContext | None:
    if not (opts.tls_ca or opts.tls_cert):
        return None
    ctx = ssl.create_default_context(cafile=opts.tls_ca)
    if opts.tls_cert:
        ctx.load_cert_chain(opts.tls_cert, opts.tls_key)
    return ctx


def _explain(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    low = text.lower()
    if "authorization" in low or "authentication" in low:
        return "authorization refused (check user/password, token, NKey or creds)"
    return text


async def connect(
    opts: ConnectOptions,
    *,
    connect_timeout: float = 3.0,
    on_event: Callable[[str, str], None] | None = None,
) -> Bus:
    """Connect to NATS and JetStream. Raises ``BusError`` with a one-line reason.

    Error handling: the first connection is tried a few times and then fails
    clearly; once connected, nats-py reconnects forever in the background and
    every disconnect and reconnect is logged.
    """
    where = opts.safe_url()

    conn: list[Any] = []  # set once connected: a disconnect during our own close is quiet
    first_errors: list[BaseException] = []  # before the first connection: reported once, below

    async def error_cb(exc: Exception) -> None:
        if not conn:
            first_errors.append(exc)
            log.debug("nats.connect_error", url=where, error=_explain(exc))
            return
        log.warning("nats.error", url=where, error=_explain(exc))

    async def disconnected_cb() -> None:
        if conn and (conn[0].is_closed or conn[0].is_draining):
            return
        log.warning("nats.disconnected", url=where)

    async def reconnected_cb() -> None:
        log.info("nats.reconnected", url=where)

    kwargs: dict[str, Any] = {
        "servers": [u.strip() for u in opts.url.split(",") if u.strip()],
        "name": opts.name,
        "connect_timeout": connect_timeout,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "error_cb": error_cb,
        "disconnected_cb": disconnected_cb,
        "reconnected_cb": reconnected_cb,
        "pending_size": 64 * 1024 * 1024,
    }
    if opts.user:
        kwargs["user"] = opts.user
        kwargs["password"] = opts.password or ""
    if opts.token:
        kwargs["token"] = opts.token
    if opts.creds:
        kwargs["user_credentials"] = opts.creds
    if opts.nkey:
        kwargs["nkeys_seed"] = opts.nkey
    try:
        tls = _tls_context(opts)
    except (OSError, ssl.SSLError) as exc:
        raise BusError(f"cannot load TLS files for {where}: {exc}") from None
    if tls is not None:
        kwargs["tls"] = tls
    last: BaseException | None = None
    for _attempt in range(3):
        try:
            nc = await _connect_once(kwargs, connect_timeout)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            last = exc
            await asyncio.sleep(0.3)
            continue
        conn.append(nc)
        return Bus(nc)
    # nats-py reports the real cause (say, an authorization violation) through error_cb and
    # then fails with a generic one (no servers, a timeout): name the real cause
    causes = [_explain(e) for e in first_errors] + ([_explain(last)] if last else [])
    refused = [c for c in causes if c.startswith("authorization refused")]
    reason = refused[0] if refused else (causes[-1] if causes else "unknown")
    raise BusError(f"cannot connect to NATS at {where}: {reason}")


async def _connect_once(kwargs: dict[str, Any], timeout: float) -> Any:
    # nats-py retries the initial connection forever unless max_reconnect_attempts > 0
    # (0 means "no limit" there): try each server twice, bounded in time too, and keep
    # infinite reconnects for later.
    first = dict(kwargs, allow_reconnect=True, max_reconnect_attempts=1)
    nc = NATSClient()
    try:
        async with asyncio.timeout(timeout * 2):
            await nc.connect(**first)
    except BaseException:
        await nc.close()
        raise
    # after the first success, reconnect forever
    nc.options["max_reconnect_attempts"] = -1
    return nc


def _is_already_exists(exc: Exception) -> bool:
    return "already in use" in str(exc).lower() or "already exists" in str(exc).lower()


class Bus:
    """A JetStream connection with the operations matrix_p2p needs."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=10.0)

    # ---------------------------------------------------------------- setup
    async def ensure_streams(self, names: Names, *, replicas: int | None = None) -> None:
        """Create (or update) the task, results and dead-letter streams. Idempotent.

        ``replicas`` (R1, R3 ...) applies when a stream is created or when given;
        None keeps an existing stream's replicas (a sink started without
        ``--replicas`` must not scale an R3 stream down), and creates R1.
        """
        await self._ensure_stream(api.StreamConfig(
            name=names.tasks_stream,
            subjects=[f"{names.task_prefix}.>"],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW_S,
            num_replicas=replicas,
        ))
        await self._ensure_stream(api.StreamConfig(
            name=names.results_stream,
            subjects=[names.done, names.failed],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW_S,
            num_replicas=replicas,
        ))
        await self._ensure_stream(api.StreamConfig(
            name=names.dlq_stream,
            subjects=[names.dlq],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=replicas,
        ))

    async def _ensure_stream(self, cfg: api.StreamConfig) -> None:
        try:
            await _when_ready(f"stream {cfg.name}", lambda: self.js.add_stream(cfg))
        except nats.js.errors.BadRequestError as exc:
            if not _is_already_exists(exc):
                raise BusError(f"cannot create stream {cfg.name}: {exc.description}") from None
            if cfg.num_replicas is None:
                try:
                    info = await _when_ready(f"stream {cfg.name}",
                                             lambda: self.js.stream_info(cfg.name))
                except (TimeoutError, nats.errors.Error) as exc2:
                    raise BusError(f"cannot read stream {cfg.name}: {_explain(exc2)}") from None
                cfg.num_replicas = info.config.num_replicas
            try:
                await _when_ready(f"stream {cfg.name}", lambda: self.js.update_stream(cfg))
            except nats.js.errors.Error as exc2:
                raise BusError(f"cannot update stream {cfg.name}: {exc2}") from None
        except (TimeoutError, nats.errors.Error) as exc:
            raise BusError(f"cannot create stream {cfg.name}: {_explain(exc)}") from None

    async def ensure_role_consumer(
        self, names: Names, role: str, *, ack_wait_s: float, max_ack_pending: int
    ) -> None:
        """The role's one durable pull consumer, shared by every worker of the role."""
        await self._ensure_consumer(names.tasks_stream, api.ConsumerConfig(
            name=role,
            durable_name=role,
            filter_subject=names.task(role),
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s,
            max_deliver=-1,  # delivery limits are ours: the task ends as failed, not silently
            max_ack_pending=max_ack_pending,
            max_waiting=512,
        ))

    async def ensure_results_consumer(
        self, names: Names, durable: str, *, ack_wait_s: float = 30.0,
        max_ack_pending: int = 10000
    ) -> None:
        await self._ensure_consumer(names.results_stream, api.ConsumerConfig(
            name=durable,
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s,
            max_deliver=-1,
            max_ack_pending=max_ack_pending,
        ))

    async def _ensure_consumer(self, stream: str, cfg: api.ConsumerConfig) -> None:
        try:
            await _when_ready(f"consumer {cfg.name}", lambda: self.js.add_consumer(stream, cfg))
        except (TimeoutError, nats.errors.Error) as exc:
            raise BusError(f"cannot create consumer {cfg.name} on {stream}: {_explain(exc)}") from None

    async def puller(self, stream: str, durable: str) -> Puller:
        try:
            sub = await self.js.pull_subscribe_bind(
                durable=durable, stream=stream, pending_msgs_limit=-1, pending_bytes_limit=-1
            )
        except (TimeoutError, nats.errors.Error) as exc:
            raise BusError(f"cannot bind to consumer {durable} on {stream}: {exc}") from None
        return Puller(sub, stream, durable)

    async def submitted_kv(self, names: Names, *, replicas: int | None = None) -> SubmittedKV:
        try:
            kv = await _when_ready(f"bucket {names.submitted_bucket}", lambda: self.js.create_key_value(
                bucket=names.submitted_bucket, history=1, replicas=replicas or 1
            ))
        except nats.js.errors.BadRequestError:
            kv = await self.js.key_value(names.submitted_bucket)
        except (TimeoutError, nats.errors.Error) as exc:
            raise BusError(f"cannot open key-value bucket {names.submitted_bucket}: {exc}") from None
        return SubmittedKV(kv)

    def fleet_state(self, **options: Any) -> KVFleetState:
        """LLM endpoint state shared by every worker on this broker (not started:
        ``async with bus.fleet_state() as fleet``). Options: see ``KVFleetState``."""
        from matrix_p2p.bus.fleet_kv import KVFleetState

        return KVFleetState(self.js, **options)

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
        try:
            ack = await self.js.publish(subject, data, timeout=timeout, headers=hdrs or None)
        except nats.js.errors.NoStreamResponseError:
            raise BusError(f"no stream accepts subject {subject!r}") from None
        except nats.errors.MaxPayloadError:
            raise PayloadTooLargeError(
                f"publish to {subject} refused: {len(data)} bytes exceed the broker's "
                f"max_payload of {self.max_payload} bytes"
            ) from None
        except nats.js.errors.APIError as exc:
            raise BusError(f"publish to {subject} refused: {exc.description}") from None
        except (TimeoutError, nats.errors.Error) as exc:
            raise BusError(f"publish to {subject} failed: {_explain(exc)}") from None
        return bool(ack.duplicate)

    async def dead_letter(
        self, names: Names, data: bytes, *, reason: str, subject: str, extra: dict[str, str] | None = None
    ) -> None:
        """Keep the original bytes with the reason on the dead-letter stream."""
        headers = {"Mx-Reason": reason[:1000], "Mx-Subject": subject, **(extra or {})}
        # one line headers only: NATS headers cannot hold CR/LF
        headers = {k: v.replace("\r", " ").replace("\n", " ") for k, v in headers.items()}
        # A message near max_payload plus our headers would not fit: keep its head and
        # say so, rather than fail the dead-lettering and redeliver the garbage forever.
        room = self.max_payload - DLQ_HEADROOM
        if len(data) > room:
            headers["Mx-Truncated"] = f"original {len(data)} bytes, kept the first {room}"
            data = data[:room]
        await self.publish(names.dlq, data, headers=headers)

    @property
    def max_payload(self) -> int:
        """The largest message the connected server accepts (its INFO ``max_payload``)."""
        return int(self.nc.max_payload or 1024 * 1024)

    async def delete_msg(self, stream: str, seq: int) -> bool:
        """Remove one stored message; False if it was not there."""
        try:
            return bool(await self.js.delete_msg(stream, seq))
        except nats.js.errors.NotFoundError:
            return False
        except nats.js.errors.APIError as exc:
            if "no message found" in str(exc).lower() or exc.code == 404:
                return False
            raise BusError(f"cannot delete {stream} #{seq}: {exc.description}") from None
        except (TimeoutError, nats.errors.Error) as exc:
            raise BusError(f"cannot delete {stream} #{seq}: {_explain(exc)}") from None

    async def next_msg(self, stream: str, seq: int, subject: str = ">") -> StoredMsg | None:
        """The first stored message at or after ``seq`` matching ``subject``; None past the end."""
        return await self._get(stream, max(1, seq), subject, f"{stream} from #{seq}")

    async def stored(self, stream: str, seq: int) -> StoredMsg | None:
        """One stored message by sequence, with its time; None if it is not there."""
        return await self._get(stream, seq, None, f"{stream} #{seq}")

    async def _get(self, stream: str, seq: int, subject: str | None, what: str) -> StoredMsg | None:
        try:
            if subject is None:
                m = await self.js.get_msg(stream, seq)
            else:
                m = await self.js.get_msg(stream, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return None
        except nats.js.errors.APIError as exc:
            if exc.code == 404:
                return None
            raise BusError(f"cannot read {what}: {exc.description}") from None
        except (TimeoutError, nats.errors.Error) as exc:
            raise BusError(f"cannot read {what}: {_explain(exc)}") from None
        return _stored(m)

    async def iter_stream(
        self, stream: str, subject: str = ">", *, start: int = 1, end: int | None = None
    ) -> AsyncIterator[StoredMsg]:
        """Stored messages in sequence order (gaps from deletions are skipped)."""
        if end is None:
            end = (await self.stream_bounds(stream))[1]
        seq = start
        while seq <= end:
            m = await self.next_msg(stream, seq, subject)
            if m is None or m.seq > end:
                return
            yield m
            seq = m.seq + 1

    # ---------------------------------------------------------------- status
    async def stream_counts(self, stream: str) -> dict[str, int]:
        """Messages per subject in a stream."""
        try:
            info = await self.js.stream_info(stream, subjects_filter=">")
        except nats.js.errors.NotFoundError:
            return {}
        except (TimeoutError, nats.errors.Error) as exc:
            raise BusError(f"cannot read stream {stream}: {_explain(exc)}") from None
        return dict(info.state.subjects or {})

    async def stream_msgs(self, stream: str) -> int:
        try:
            info = await self.js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return 0
        except (TimeoutError, nats.errors.Error) as exc:
            raise BusError(f"cannot read stream {stream}: {_explain(exc)}") from None
        return int(info.state.messages)

    async def consumer_stats(self, stream: str, durable: str) -> ConsumerStats | None:
        try:
            info = await self.js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:
            return None
        except (TimeoutError, nats.errors.Error) as exc:
            raise BusError(f"cannot read consumer {durable}: {_explain(exc)}") from None
        return ConsumerStats(
            pending=int(info.num_pending or 0),
            ack_pending=int(info.num_ack_pending or 0),
            redelivered=int(info.num_redelivered or 0),
            waiting=int(info.num_waiting or 0),
        )

    async def stream_bounds(self, stream: str) -> tuple[int, int]:
        try:
            info = await self.js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return (0, 0)
        return int(info.state.first_seq), int(info.state.last_seq)

    async def close(self) -> None:
        """Drain (flush pending publishes and acks) and close. Safe to call twice."""
        if self.nc.is_closed:
            return
        try:
            await asyncio.wait_for(self.nc.drain(), timeout=10.0)
        except (TimeoutError, nats.errors.Error):
            await self.nc.close()
