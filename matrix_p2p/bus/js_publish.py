"""PubAcks for every publish on a connection, on one wildcard inbox (see ``jetstream.py``).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import msgspec
import nats.js.errors
from nats.aio.msg import Msg

from matrix_p2p.bus.errors import translate


class _PubAck(msgspec.Struct):
    duplicate: bool = False
    error: dict[str, Any] | None = None


_puback = msgspec.json.Decoder(_PubAck)


class AckInbox:
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


def duplicate(msg: Msg) -> bool:
    """Whether the PubAck says the message was a duplicate; raises the broker's refusal."""
    if msg.headers and msg.headers.get("Status") == "503":
        raise nats.js.errors.NoStreamResponseError
    ack = _puback.decode(msg.data)
    if ack.error is not None:
        raise nats.js.errors.APIError.from_error(ack.error)
    return ack.duplicate
