"""A key-value bucket that a process opens (or creates) and watches until told to stop.

Shared by ``fleet_kv`` (endpoint state between workers) and ``registry_kv`` (replicas
that registered themselves): both open-or-create a TTL bucket the same way and re-watch
it with backoff after a failure or ``resync_s`` of silence. Every nats call sits inside
``errors.translate``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from matrix_p2p.backoff import Retrying
from matrix_p2p.bus.errors import AlreadyExists, NotFound, translate
from matrix_p2p.errors import BusError


async def open_bucket(js: Any, bucket: str, *, ttl_s: float, replicas: int | None,
                      description: str) -> Any:
    """Open ``bucket``, creating it (history 1, ``ttl_s``) if it is not there yet."""
    try:
        with translate(f"open key-value bucket {bucket}"):
            return await js.key_value(bucket)
    except NotFound:
        try:
            with translate(f"create key-value bucket {bucket}"):
                return await js.create_key_value(bucket=bucket, history=1, ttl=ttl_s,
                                                 replicas=replicas, description=description)
        except AlreadyExists:  # another process created it between our two calls
            with translate(f"open key-value bucket {bucket}"):
                return await js.key_value(bucket)


async def watch_until(
    stop: asyncio.Event, bucket: str, open_kv: Callable[[], Awaitable[Any]],
    consume: Callable[[Any], Awaitable[None]],
    failed: Callable[[BusError, float], Awaitable[None]], backoff_cap_s: float,
) -> None:
    """Watch every key of ``bucket`` and hand the watcher to ``consume`` until ``stop``.

    ``consume`` returns to have the bucket watched afresh (a new watch re-reads every
    key); a ``BusError`` goes to ``failed`` with the backoff delay it should wait.
    """
    backoff = Retrying(0.1, backoff_cap_s)
    while not stop.is_set():
        try:
            kv = await open_kv()
            with translate(f"watch key-value bucket {bucket}"):
                watcher = await kv.watchall()
        except BusError as exc:
            await failed(exc, backoff.next())
            continue
        try:
            backoff.reset()
            await consume(watcher)
        except BusError as exc:
            await failed(exc, backoff.next())
        finally:
            # AttributeError: nats-py's stop() on a connection that is gone
            with contextlib.suppress(BusError, AttributeError), \
                    translate(f"stop watching {bucket}"):
                await watcher.stop()
