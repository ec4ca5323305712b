"""Connecting to NATS: client options (secrets only here, never in logs), TLS, a bounded
first connection with the real cause named, and reconnects forever after it."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

import structlog
from nats.aio.client import Client as NATSClient

from matrix_p2p.bus.errors import AUTH_HINT, reason, translate
from matrix_p2p.bus.jetstream import JetStreamBus
from matrix_p2p.bus.types import ConnectOptions
from matrix_p2p.errors import BusError

log = structlog.get_logger(__name__)


def _tls_context(opts: ConnectOptions) -> ssl.SSLContext | None:
    if not (opts.tls_ca or opts.tls_cert):
        return None
    ctx = ssl.create_default_context(cafile=opts.tls_ca)
    if opts.tls_cert:
        ctx.load_cert_chain(opts.tls_cert, opts.tls_key)
    return ctx


PING_INTERVAL_S = 4.0
MAX_OUTSTANDING_PINGS = 2


def _client_options(opts: ConnectOptions, connect_timeout: float) -> dict[str, Any]:
    """nats-py's connect keywords, callbacks aside. Secrets go only here, never to logs."""
    kwargs: dict[str, Any] = {
        "servers": [u.strip() for u in opts.url.split(",") if u.strip()],
        "name": opts.name,
        "connect_timeout": connect_timeout,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        # a broker that goes silent (its host cut off, powered off) sends no reset: only
        # the client's own pings find out. nats-py's default (every 120 s, 2 outstanding)
        # left workers stuck on a dead node for minutes (the hosts tests in
        # tests/chaos/test_hosts_cluster.py saw it); this notices within ~12 s
        # and moves to another node of the cluster.
        "ping_interval": PING_INTERVAL_S,
        "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
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
        raise BusError(f"cannot load TLS files for {opts.safe_url()}: {exc}") from None
    if tls is not None:
        kwargs["tls"] = tls
    return kwargs


async def connect(
    opts: ConnectOptions,
    *,
    connect_timeout: float = 3.0,
    on_event: Callable[[str, str], None] | None = None,
) -> JetStreamBus:
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
            log.debug("nats.connect_error", url=where, error=reason(exc))
            return
        log.warning("nats.error", url=where, error=reason(exc))

    async def disconnected_cb() -> None:
        if conn and (conn[0].is_closed or conn[0].is_draining):
            return
        log.warning("nats.disconnected", url=where)

    async def reconnected_cb() -> None:
        log.info("nats.reconnected", url=where)

    kwargs = _client_options(opts, connect_timeout)
    kwargs.update(error_cb=error_cb, disconnected_cb=disconnected_cb,
                  reconnected_cb=reconnected_cb)
    last: BaseException | None = None
    for _attempt in range(3):
        try:
            with translate(f"connect to {where}"):
                nc = await _connect_once(kwargs, connect_timeout)
        except BusError as exc:
            last = exc.__context__ or exc  # the nats error: its own words for the reason below
            await asyncio.sleep(0.3)
            continue
        conn.append(nc)
        return JetStreamBus(nc)
    # nats-py reports the real cause (say, an authorization violation) through error_cb and
    # then fails with a generic one (no servers, a timeout): name the real cause
    causes = [reason(e) for e in first_errors] + ([reason(last)] if last else [])
    refused = [c for c in causes if c == AUTH_HINT]
    why = refused[0] if refused else (causes[-1] if causes else "unknown")
    raise BusError(f"cannot connect to NATS at {where}: {why}")


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
