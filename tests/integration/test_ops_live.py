"""Operations against real processes: a worker and a sink scraped after a run (every metric the
Grafana dashboard queries is there, counters non-zero), and a worker's systemd notify protocol."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.bus import ConnectOptions, connect
from matrix_p2p.bus.fleet_kv import FLEET_BUCKET
from matrix_p2p.metrics import queried_names
from matrix_p2p.runtime.topology import Names
from matrix_p2p.workflow import loader
from tests import procs
from tests.conftest import DUMMY_YAML, make_spec

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "infra" / "grafana" / "matrix_p2p.json"
CORAL = ROOT / "workflows" / "coral.yaml"
# short-lived: `submit` exits before a scrape, its one counter is checked in the unit tests
SOURCE_ONLY = {"matrix_p2p_source_tasks_submitted_total"}
# gauges: their value after a run is legitimately 0 (nothing in flight, nothing pending)
GAUGES = {"matrix_p2p_tasks_inflight", "matrix_p2p_consumer_pending",
          "matrix_p2p_consumer_redelivered"}
# counters that move only when the broker misbehaves (liveness/): exported at zero
FAULT_ONLY = {"matrix_p2p_liveness_heals_total"}


class Child:
    """``python -m matrix_p2p ...`` whose JSON log lines are read as they come."""

    def __init__(self, args: list[str], extra_env: dict[str, str] | None = None) -> None:
        self.p = subprocess.Popen([sys.executable, "-m", "matrix_p2p", *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env={**procs.env(), **(extra_env or {})},
                                  text=True)
        self.lines: list[str] = []
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            with self._lock:
                self.lines.append(line)
                for name, ev in self._events.items():
                    if f'"event": "{name}"' in line:
                        ev.set()
        with self._lock:
            for ev in self._events.values():
                ev.set()  # the process ended: nobody waits forever

    def event(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        """The first log line with ``event == name`` (waits for it)."""
        with self._lock:
            ev = self._events.setdefault(name, threading.Event())
            if any(f'"event": "{name}"' in line for line in self.lines):
                ev.set()
        assert ev.wait(timeout), f"no {name} within {timeout}s: {self.text()[-2000:]}"
        for line in self.text().splitlines():
            if f'"event": "{name}"' in line:
                found: dict[str, Any] = json.loads(line)
                return found
        raise AssertionError(f"{name}: the process ended first: {self.text()[-2000:]}")

    def text(self) -> str:
        with self._lock:
            return "".join(self.lines)

    def stop(self, timeout: float = 40.0) -> int:
        procs.stop_process(self.p, timeout=timeout)
        self._reader.join(timeout=5)
        if self.p.stdout is not None:
            self.p.stdout.close()
        return self.p.returncode


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> labels -> value."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def family_of(sample: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if sample.endswith(suffix):
            return sample[: -len(suffix)]
    return sample


@pytest.fixture
def sim_url() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # a few 429s: the LLM metrics see more than one code, and the agents' retries run
    sim = Child(["sim-llm", "--port", str(port), "--fail-rate", "0.05", "--output-tokens-mean", "8"])
    try:
        procs.wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        sim.stop()


def coral_copy(tmp_path: Path, name: str) -> Path:
    wf = yaml.safe_load(CORAL.read_text())
    wf["name"] = name
    wf["source"]["path"] = str(CORAL.parent / wf["source"]["path"])
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(wf, sort_keys=False))
    return path


def test_live_worker_and_sink_export_every_dashboard_metric(
        nats_server: EmbeddedNats, sim_url: str, tmp_path: Path) -> None:
    n = 20
    wf = coral_copy(tmp_path, f"live{int(time.time() * 1000) % 10**8}")
    spec = loader.load(str(wf))
    out = tmp_path / "out.jsonl"
    nats = ["--nats", nats_server.url]
    worker = Child(["worker", str(wf), "--role", "all", *nats, "--llm-url", sim_url,
                    "--metrics-port", "0"])
    sink = Child(["sink", str(wf), "--out", str(out), *nats, "--metrics-port", "0"])
    try:
        worker_url = worker.event("metrics.serving")["url"]
        sink_url = sink.event("metrics.serving")["url"]
        worker.event("worker.ready")
        sub = procs.mx("submit", str(wf), "--limit", str(n), *nats, "--metrics-port", "0")
        assert sub.returncode == 0, sub.stderr
        assert '"event": "metrics.serving"' in sub.stderr

        async def garbage() -> None:  # one dead letter, so that counter moves too
            bus = await connect(ConnectOptions(url=nats_server.url))
            try:
                await bus.publish(Names.of(spec).task("teacher"), b"\x00not an envelope")
            finally:
                await bus.close()

        asyncio.run(garbage())
        deadline = time.monotonic() + 120
        while sum(scrape(sink_url).get("matrix_p2p_tasks_finished_total", {}).values()) < n:
            assert time.monotonic() < deadline, sink.text()[-2000:]
            time.sleep(0.2)  # polling another process's /metrics: there is no event to await
        w, k = scrape(worker_url), scrape(sink_url)
    finally:
        assert worker.stop() == 0, worker.text()[-3000:]
        assert sink.stop() == 0, sink.text()[-3000:]

    queried = queried_names(json.loads(DASHBOARD.read_text()))
    scraped = {**w, **k}
    missing = queried - SOURCE_ONLY - {family_of(s) for s in scraped}
    assert not missing, f"the dashboard queries names the live processes do not export: {missing}"
    for name, series in scraped.items():
        family = family_of(name)
        if (not name.startswith("matrix_p2p_") or family in GAUGES | SOURCE_ONLY | FAULT_ONLY
                or name.endswith("_created")):
            continue
        assert any(v > 0 for v in series.values()), f"{name} is all zero after the run: {series}"

    def value(metrics: dict[str, Any], name: str, **labels: str) -> float:
        return metrics[name][tuple(sorted(labels.items()))]

    assert value(k, "matrix_p2p_tasks_finished_total", status="done") == n
    assert value(k, "matrix_p2p_sink_rows_written_total") == n
    for role in spec.roles:
        assert value(w, "matrix_p2p_hops_total", role=role, outcome="forwarded") > 0
        assert value(w, "matrix_p2p_llm_tokens_total", role=role, kind="completion") > 0
        assert value(w, "matrix_p2p_tasks_inflight", role=role) == 0
        assert (role,) in {tuple(dict(lbl).values()) for lbl in w["matrix_p2p_consumer_pending"]}
    assert value(w, "matrix_p2p_hops_total", role="teacher", outcome="dead_lettered") == 1
    assert value(w, "matrix_p2p_dead_letters_total", consumer="teacher") == 1
    done = sum(value(w, "matrix_p2p_hops_total", role=r, outcome="done") for r in spec.roles)
    assert done == n
    codes = {dict(lbl)["code"] for lbl in w["matrix_p2p_llm_requests_total"]}
    assert "200" in codes
    assert all(v >= 1 for v in w["matrix_p2p_llm_endpoint_limit"].values())


def next_fields(sock: socket.socket, skip: str = "WATCHDOG=1") -> list[str]:
    """The next datagram's fields that are not a watchdog ping."""
    while True:
        fields = sock.recv(4096).decode().split("\n")
        if fields != [skip]:
            return fields


def test_worker_process_notifies_ready_then_stopping_on_sigterm(
        notify_socket: tuple[str, socket.socket], tmp_path: Path) -> None:
    path, sock = notify_socket
    sock.settimeout(60)  # each recv below waits for the worker's next datagram
    spec = make_spec(tmp_path, DUMMY_YAML, [])
    # a broker of its own: afterwards, the fleet's bucket must not exist on it
    with EmbeddedNats(store_dir=tmp_path / "nats", sync="interval") as server:
        # WATCHDOG_USEC of 1 s: a ping every 0.5 s while the fetch loops turn
        worker = Child(["worker", str(spec.path), "--role", "all", "--nats", server.url],
                       extra_env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
        try:
            ready = next_fields(sock)
            assert ready[0] == "READY=1", ready
            assert ready[1] == f"STATUS=serving teacher,student,judge of {spec.name}"
            # READY comes once the consumers are bound: the worker has logged it too
            assert worker.event("worker.ready", timeout=5)
            assert sock.recv(4096) == b"WATCHDOG=1"  # the watchdog pings while the loops turn
            worker.p.send_signal(signal.SIGTERM)
            stopping = next_fields(sock)
            assert stopping == ["STOPPING=1", "STATUS=draining"], stopping
            assert worker.p.wait(timeout=40) == 0
        finally:
            worker.stop()

        async def fleet_bucket_exists() -> bool:
            nc = await nats.connect(server.url)
            try:
                await nc.jetstream().stream_info(f"KV_{FLEET_BUCKET}")
            except nats.js.errors.NotFoundError:
                return False
            finally:
                await nc.close()
            return True

        # an LLM-free worker never opens the fleet's key-value bucket
        assert not asyncio.run(fleet_bucket_exists())


def test_run_ends_with_a_summary_table_and_json(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, DUMMY_YAML, [{"n": i} for i in range(20)])
    out = tmp_path / "out" / "rows.jsonl"
    r = procs.mx("run", str(spec.path), "--no-progress", "--out", str(out), "--store",
                 str(tmp_path / "store"), "--sync-interval", "--metrics-port", "0")
    assert r.returncode == 0, r.stderr
    assert '"event": "metrics.serving"' in r.stderr and '"process": "run"' in r.stderr
    lines = r.stderr.splitlines()
    [head] = [i for i, line in enumerate(lines) if line.startswith(f"{spec.name}: finished in ")]
    assert lines[head].endswith(f"; 20 rows in {out}")
    assert lines[head + 1] == f"  summary: {out}.summary.json"
    assert lines[head + 2].split()[:7] == ["tasks", "this", "run", "20", "done", "0", "failed"]
    assert lines[head + 3] == "  output: 20 done, 0 failed; 20 tasks asked for"
    summary = json.loads((tmp_path / "out" / "rows.jsonl.summary.json").read_text())
    assert (summary["done"], summary["rows"], summary["cost"]) == (20, 20, None)
    assert summary["roles"] == []  # the dummy agents call no LLM
