"""JetStream deliveries and the pull consumer's own fetch loop (see ``jetstream.py``).

Our own pull requests on one inbox per puller, instead of nats-py's fetch (a task,
a timer and a uuid per message). Every nats call sits inside ``errors.translate``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import nats.js.errors
from nats.aio.msg import Msg

from matrix_p2p.bus.errors import translate
from matrix_p2p.bus.types import Delivery
from matrix_p2p.errors import BusError


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
