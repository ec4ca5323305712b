"""The systemd notify protocol (``sd_notify``), with no dependency.

A service started with ``Type=notify`` tells systemd, by datagrams of
``KEY=VALUE`` lines to the unix socket named in ``$NOTIFY_SOCKET``, when it
is ready (``READY=1``), that it is stopping (``STOPPING=1``), a one-line
status for ``systemctl status`` (``STATUS=...``) and, with ``WatchdogSec``,
that it is still alive (``WATCHDOG=1``). A name starting with ``@`` is in
the abstract namespace. Without ``$NOTIFY_SOCKET`` (a terminal, a test, a
container) every call is a no-op.

A worker uses it like this::

    notifier = Notifier.from_env()
    alive = Liveness(max_age_s=60)          # the fetch loop calls alive.beat()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(Watchdog.from_env(notifier, alive).run(stop))
        ...                                  # connect, bind consumers
        notifier.ready("serving judge")
        await stop.wait()
        notifier.stopping("draining")
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping

import structlog

from matrix_p2p.aio import pause, wait_any

log = structlog.get_logger(__name__)

Wait = Callable[[float, asyncio.Event], Awaitable[bool]]


def _address(name: str) -> str | bytes:
    if name.startswith("@"):
        # abstract namespace: a leading NUL byte instead of the '@'
        return b"\0" + name[1:].encode()
    return name


class Notifier:
    """Sends notify datagrams to one socket; ``enabled`` is False without one.

    Error handling: a send that fails (the socket vanished, systemd is
    restarting) is logged once per kind and reported as False; it never
    raises, so a missing supervisor cannot stop a worker.
    """

    def __init__(self, socket_name: str | None) -> None:
        self.socket_name = socket_name or None
        self._sock: socket.socket | None = None
        self._warned: set[str] = set()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.socket_name is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram. True if it was sent."""
        if self.socket_name is None:
            return False
        if any("\n" in f for f in fields):
            raise ValueError("a notify field is one line: " + repr(fields))
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # a full socket buffer must not block the event loop; we drop the ping
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(fields).encode(), _address(self.socket_name))
        except OSError as exc:
            kind = type(exc).__name__
            if kind not in self._warned:
                self._warned.add(kind)
                log.warning("sdnotify.send_failed", socket=self.socket_name, error=str(exc))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Serving: systemd's start job completes, ``systemctl start`` returns."""
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str | None = None) -> bool:
        """Shutting down (a drain in progress): not a failure."""
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """The one line ``systemctl status`` shows."""
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        """Alive: resets the ``WatchdogSec`` timer."""
        return self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more of the start or stop timeout (a long drain)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between pings (half of ``WATCHDOG_USEC``, as sd_watchdog_enabled
    advises), or None when systemd does not watch this process."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    # WATCHDOG_PID names the process meant: a child that inherited the variables must not ping
    wpid = env.get("WATCHDOG_PID")
    if wpid and int(wpid) != (os.getpid() if pid is None else pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("sdnotify.bad_watchdog_usec", value=usec)
        return None
    return value / 2_000_000 if value > 0 else None


class Liveness:
    """Passes while ``beat()`` was called within ``max_age_s``: the worker's
    fetch loop beats once per iteration, so a wedged loop stops the pings."""

    def __init__(self, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        self._last = self._clock()

    def __call__(self) -> bool:
        return self._clock() - self._last <= self.max_age_s


class Watchdog:
    """Pings ``WATCHDOG=1`` every ``interval_s`` while ``alive()`` passes.

    When ``alive()`` fails the pings stop (and the status says why), so
    systemd kills and restarts a stuck process after ``WatchdogSec``; they
    resume if it recovers first. Run it in the process's TaskGroup; it
    returns when ``stop`` is set. ``wait(seconds, stop)`` is injected so
    tests drive the ticks (default: ``aio.pause``).
    """

    def __init__(
        self,
        notifier: Notifier,
        alive: Callable[[], bool],
        interval_s: float | None,
        *,
        wait: Wait = pause,
    ) -> None:
        self.notifier = notifier
        self.alive = alive
        self.interval_s = interval_s
        self._wait = wait
        self.pings = 0
        self.missed = 0

    @classmethod
    def from_env(cls, notifier: Notifier, alive: Callable[[], bool],
                 env: Mapping[str, str] | None = None, *, wait: Wait = pause) -> Watchdog:
        return cls(notifier, alive, watchdog_interval(env), wait=wait)

    async def run(self, stop: asyncio.Event) -> None:
        if self.interval_s is None or not self.notifier.enabled:
            return  # not watched: nothing to do, and nothing to keep alive
        healthy = True
        while not stop.is_set():
            if self.alive():
                if not healthy:
                    log.info("sdnotify.watchdog_resumed")
                    self.notifier.status("alive again")
                healthy = True
                self.notifier.watchdog()
                self.pings += 1
            else:
                self.missed += 1
                if healthy:
                    log.error("sdnotify.watchdog_withheld", reason="liveness check failed")
                    self.notifier.status("stuck: liveness check failed, watchdog pings withheld")
                healthy = False
            if await self._wait(self.interval_s, stop):
                return


async def supervise(ready: asyncio.Event, stop: asyncio.Event, done: asyncio.Event, *,
                    status: str, alive: Callable[[], bool],
                    notifier: Notifier | None = None) -> None:
    """A service's whole conversation with systemd, run beside its body.

    ``READY=1`` (with ``status``) once ``ready`` is set, ``STOPPING=1`` once
    ``stop`` is set (SIGTERM: the drain begins) or the body ends, watchdog
    pings while ``alive()`` passes, until ``done`` (set by the owner when the
    body returned). A no-op without ``$NOTIFY_SOCKET``.
    """
    n = notifier if notifier is not None else Notifier.from_env()
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(Watchdog.from_env(n, alive).run(done))
            await wait_any(ready, done)
            if ready.is_set():
                n.ready(status)
            await wait_any(stop, done)
            n.stopping("draining" if stop.is_set() else "finished")
    finally:
        n.close()
