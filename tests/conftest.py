"""Shared fixtures: a real nats-server per test session, workflows with unique names."""

from __future__ import annotations

import itertools
import json
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import structlog

from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.bus import Bus, ConnectOptions, MemoryBus, connect
from matrix_p2p.workflow import loader
from matrix_p2p.workflow import spec as specmod

if TYPE_CHECKING:
    from tests.fault_rig import Rig

os.environ.setdefault("MX_LOG_LEVEL", "warning")
_counter = itertools.count()


@pytest.fixture(autouse=True)
def _structlog_config_restored() -> Iterator[None]:
    """A test that runs the CLI in-process configures structlog (a warning-level filter from
    MX_LOG_LEVEL, its stream): put back what was there, so that later tests' capture_logs()
    still see info events."""
    was = structlog.is_configured()
    saved = structlog.get_config()
    yield
    if was:
        structlog.configure(**saved)
    else:
        structlog.reset_defaults()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """One real nats-server with JetStream on a free 127.0.0.1 port, stopped by PID."""
    server = EmbeddedNats(store_dir=tmp_path_factory.mktemp("nats"), sync="interval")
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[Bus]:
    b = await connect(ConnectOptions(url=nats_server.url, name="tests"))
    yield b
    await b.close()


@pytest.fixture(params=["memory", "jetstream"])
async def any_bus(request: pytest.FixtureRequest, nats_server: EmbeddedNats) -> AsyncIterator[Bus]:
    """The same test on the in-memory bus and on a real nats-server."""
    if request.param == "memory":
        b: Bus = MemoryBus()
    else:
        b = await connect(ConnectOptions(url=nats_server.url, name="tests"))
    yield b
    await b.close()


@pytest.fixture(params=["memory", "jetstream"])
async def rig(request: pytest.FixtureRequest, nats_server: EmbeddedNats) -> AsyncIterator[Rig]:
    """A bus for the fault tests (``tests/fault_rig.py``): in memory with a movable clock,
    or a connection to the real nats-server."""
    from tests.fault_rig import Clock, Rig

    if request.param == "memory":
        clock = Clock()
        b: Bus = MemoryBus(clock=clock)
        r = Rig(b, clock)
    else:
        r = Rig(await connect(ConnectOptions(url=nats_server.url, name="fault-tests")), None)
    yield r
    await r.bus.close()


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    """A fake systemd notify socket (AF_UNIX datagrams), non-blocking. A short directory:
    AF_UNIX paths are limited to 107 bytes, pytest's tmp_path can be longer."""
    with tempfile.TemporaryDirectory(prefix="mx-sd-") as d:
        path = str(Path(d) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        try:
            yield path, sock
        finally:
            sock.close()


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_spec(tmp_path: Path, yaml_text: str, rows: list[dict[str, Any]] | None = None,
              name: str | None = None) -> specmod.WorkflowSpec:
    """A workflow with a unique name (its own streams) whose source is ``rows``."""
    name = name or f"t{next(_counter)}-{os.getpid()}"
    if rows is not None:
        write_rows(tmp_path / "rows.jsonl", rows)
    wf = tmp_path / f"{name}.yaml"
    wf.write_text(f"name: {name}\n" + yaml_text, encoding="utf-8")
    return loader.load(str(wf))


DUMMY_YAML = """
source: {path: rows.jsonl}
roles:
  teacher: {agent: "matrix_p2p_agents.dummy:Talker", llm: null, concurrency: 200}
  student: {agent: "matrix_p2p_agents.dummy:Talker", llm: null, concurrency: 200}
  judge:   {agent: "matrix_p2p_agents.dummy:Decider", llm: null, concurrency: 200, options: {p_stop: 0.5}}
routing: {type: cycle, roles: [teacher, student, judge], stop_when: agreed, max_turns: 30}
limits: {ack_wait_s: 5, retry_backoff_s: 0.05}
"""
