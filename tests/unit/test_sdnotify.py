"""The systemd notify protocol against a fake notify socket (a real AF_UNIX datagram socket)."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from matrix_p2p.sdnotify import Liveness, Notifier, Watchdog, supervise, watchdog_interval


def received(sock: socket.socket) -> list[str]:
    """Every datagram already queued (unix datagrams arrive synchronously with sendto)."""
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_ready_status_watchdog_stopping(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("serving judge")
    assert n.status("1,234 hops/s")
    assert n.watchdog()
    assert n.extend_timeout(12.5)
    assert n.stopping()
    n.close()
    assert received(sock) == [
        "READY=1\nSTATUS=serving judge",
        "STATUS=1,234 hops/s",
        "WATCHDOG=1",
        "EXTEND_TIMEOUT_USEC=12500000",
        "STOPPING=1",
    ]


def test_abstract_namespace() -> None:
    name = "mx-sd-test-" + secrets.token_hex(6)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.setblocking(False)
    try:
        n = Notifier("@" + name)
        assert n.ready()
        n.close()
        assert received(sock) == ["READY=1"]
    finally:
        sock.close()


def test_no_socket_is_a_no_op() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert not n.ready() and not n.watchdog() and not n.stopping() and not n.status("x")


def test_vanished_socket_is_logged_once_and_never_raises(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "gone"))
    with capture_logs() as logs:
        assert not n.ready()
        assert not n.watchdog()
    n.close()
    assert [e["event"] for e in logs] == ["sdnotify.send_failed"]
    assert logs[0]["log_level"] == "warning" and "gone" in logs[0]["socket"]


def test_a_field_is_one_line(notify_socket: tuple[str, socket.socket]) -> None:
    with pytest.raises(ValueError, match="a notify field is one line"):
        Notifier(notify_socket[0]).status("two\nlines")


def test_watchdog_interval_from_env() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    me = os.getpid()
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(me)}) == 15.0
    # inherited by a child process: not ours to ping
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(me + 1)}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    with capture_logs() as logs:
        assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert logs[0]["event"] == "sdnotify.bad_watchdog_usec"


def test_liveness_follows_the_beat() -> None:
    now = [100.0]
    alive = Liveness(max_age_s=5.0, clock=lambda: now[0])
    assert alive()
    now[0] += 5.0
    assert alive()
    now[0] += 0.1
    assert not alive()
    alive.beat()
    assert alive()


class Ticks:
    """A fake ``wait``: each call blocks until the test pushes one tick."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bool] = asyncio.Queue()
        self.entered = asyncio.Event()
        self.intervals: list[float] = []

    async def __call__(self, seconds: float, stop: asyncio.Event) -> bool:
        self.intervals.append(seconds)
        self.entered.set()
        return await self.queue.get()

    async def tick(self, stopped: bool = False) -> None:
        """Let the watchdog run one more round and wait until it waits again."""
        self.entered.clear()
        self.queue.put_nowait(stopped)
        async with asyncio.timeout(5):
            await self.entered.wait()


async def test_watchdog_pings_only_while_alive(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"}
    ok = [True]
    ticks = Ticks()
    notifier = Notifier.from_env(env)
    dog = Watchdog.from_env(notifier, lambda: ok[0], env, wait=ticks)
    stop = asyncio.Event()
    async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
        task = tg.create_task(dog.run(stop))
        await ticks.entered.wait()
        assert received(sock) == ["WATCHDOG=1"]  # the first ping is at once
        assert ticks.intervals == [15.0]  # half of WatchdogSec

        await ticks.tick()
        assert received(sock) == ["WATCHDOG=1"]

        ok[0] = False  # the worker is stuck: the pings stop, so systemd kills it
        with capture_logs() as logs:
            await ticks.tick()
            await ticks.tick()
        assert received(sock) == ["STATUS=stuck: liveness check failed, watchdog pings withheld"]
        assert [e["event"] for e in logs] == ["sdnotify.watchdog_withheld"]  # once, not per tick
        assert (dog.pings, dog.missed) == (2, 2)

        ok[0] = True  # recovered before WatchdogSec ran out
        await ticks.tick()
        assert received(sock) == ["STATUS=alive again", "WATCHDOG=1"]

        stop.set()
        ticks.queue.put_nowait(True)
    notifier.close()
    assert task.done() and task.exception() is None
    assert dog.pings == 3 and received(sock) == []


async def test_watchdog_idle_without_watchdog_or_socket(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    ticks = Ticks()
    stop = asyncio.Event()
    async with asyncio.timeout(5):
        # systemd sets no WATCHDOG_USEC without WatchdogSec: returns at once, never pings
        await Watchdog.from_env(Notifier(path), lambda: True, {"NOTIFY_SOCKET": path},
                                wait=ticks).run(stop)
        await Watchdog(Notifier(None), lambda: True, 1.0, wait=ticks).run(stop)
    assert ticks.intervals == [] and received(sock) == []


async def test_watchdog_with_the_real_pause_stops_on_the_event(
        notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    stop = asyncio.Event()
    notifier = Notifier(path)
    dog = Watchdog(notifier, lambda: True, 3600.0)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
        tg.create_task(dog.run(stop))
        assert (await loop.sock_recv(sock, 4096)) == b"WATCHDOG=1"
        stop.set()  # ends the hour-long pause at once
    notifier.close()
    assert dog.pings == 1


UNITS = Path(__file__).resolve().parents[2] / "infra" / "systemd"


def unit_settings(name: str) -> dict[str, str]:
    """``Key=value`` of a unit file, continuation lines joined (the last value of a key wins)."""
    text = (UNITS / name).read_text(encoding="utf-8").replace("\\\n", " ")
    return {k.strip(): v.strip() for k, _, v in
            (line.partition("=") for line in text.splitlines()
             if "=" in line and not line.lstrip().startswith("#"))}


def test_worker_unit_is_notify_with_watchdog_and_a_stop_timeout_above_the_drain() -> None:
    s = unit_settings("matrix-p2p-worker@.service")
    assert (s["Type"], s["NotifyAccess"], s["Restart"]) == ("notify", "main", "on-failure")
    assert int(s["WatchdogSec"]) == 30
    drain = float(s["ExecStart"].split("--drain-timeout ")[1].split()[0])
    assert int(s["TimeoutStopSec"]) >= drain + 10  # systemd never SIGKILLs a clean drain


def test_sink_unit_is_notify_with_watchdog() -> None:
    s = unit_settings("matrix-p2p-sink@.service")
    assert (s["Type"], s["NotifyAccess"], int(s["WatchdogSec"])) == ("notify", "main", 30)


def test_units_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` on copies whose binaries exist on this machine."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    names = {"matrix-p2p-worker@.service": "matrix-p2p-worker@judge.service",
             "matrix-p2p-sink@.service": "matrix-p2p-sink@coral.service",
             "nats-server.service": "nats-server.service"}
    for src, dst in names.items():
        text = (UNITS / src).read_text(encoding="utf-8")
        text = text.replace("/opt/matrix-p2p/venv/bin/python", sys.executable)
        text = text.replace("/opt/matrix-p2p/venv/bin/nats-server", shutil.which("true") or "/bin/true")
        (tmp_path / dst).write_text(text, encoding="utf-8")
    r = subprocess.run([tool, "verify", "--man=no", *names.values()], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


async def test_supervise_ready_then_stopping(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    ready, stop, done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    sup = asyncio.create_task(supervise(ready, stop, done, status="serving judge",
                                        alive=lambda: True, notifier=Notifier(path)))
    await asyncio.sleep(0)  # let it start: nothing is sent before READY
    assert received(sock) == []
    ready.set()
    stop.set()
    done.set()
    await sup
    assert received(sock) == ["READY=1\nSTATUS=serving judge", "STOPPING=1\nSTATUS=draining"]


async def test_supervise_body_ended_before_ready_sends_no_ready(
        notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    done = asyncio.Event()
    done.set()  # the body failed during start-up
    await supervise(asyncio.Event(), asyncio.Event(), done, status="x", alive=lambda: True,
                    notifier=Notifier(path))
    assert received(sock) == ["STOPPING=1\nSTATUS=finished"]
