"""kill -9 of workers mid-trajectory and of the sandbox server mid-run, with real processes
(nats-server, sim-llm, sandbox-server with real bwrap, workers, sink): every task ends
exactly once, no lease outlives its TTL, restarted trajectories are counted.

Faults are injected on events read from the sandbox server's ``GET /status`` (leases
held, executions so far), never after a sleep.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from matrix_p2p.broker import EmbeddedNats
from tests.chaos.harness import (
    Proc,
    check_exactly_once,
    count_lines,
    expected_ids,
    mx,
    processes,
    read_rows,
    status_json,
    wait_for,
)
from tests.procs import wait_port

pytestmark = pytest.mark.chaos

TTL_S = 6.0
TAU = """
source: {{path: rows.jsonl, id_field: id}}
resources:
  llm: {{default: {{max_tokens: 64}}}}
  sandbox:
    env: {{ttl_s: {ttl}, timeout_s: 20, max_restarts: 3, acquire_timeout_s: 5}}
roles:
  user: {{agent: "matrix_p2p_agents.tau.roles:UserSimulator", concurrency: 50}}
  assistant: {{agent: "matrix_p2p_agents.tau.roles:Assistant", concurrency: 50, resources: [env]}}
  reward: {{agent: "matrix_p2p_agents.tau.roles:Reward", llm: null, concurrency: 50,
           resources: [env]}}
routing: {{type: python, router: "matrix_p2p_agents.tau.router:TauRouter"}}
limits: {{max_hops: 450, ack_wait_s: 2, retry_backoff_s: 0.2, max_deliveries: 12}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def sandbox_status(url: str) -> dict[str, Any]:
    """The server's /status, or {} while it is down."""
    try:
        with urllib.request.urlopen(url + "/status", timeout=2) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
            return doc
    except OSError:
        return {}


def tau_workflow(tmp: Path, n: int) -> Path:
    name = f"tauchaos{int(time.time() * 1000) % 100000}"
    (tmp / "rows.jsonl").write_text("".join(
        json.dumps({"id": f"retail_{i:03d}"}) + "\n" for i in range(n)))
    wf = tmp / f"{name}.yaml"
    wf.write_text(f"name: {name}\n" + TAU.format(ttl=TTL_S))
    return wf


class Fleet:
    """nats-server, sim-llm, sandbox-server, workers and a sink, all real processes."""

    def __init__(self, tmp: Path, ps: list[Proc], wf: Path, n: int, workers: int) -> None:
        self.tmp, self.wf, self.n = tmp, wf, n
        self.nats = EmbeddedNats(store_dir=tmp / "nats")
        self.nats.start()
        try:
            self._start(ps, wf, n, workers)
        except BaseException:
            self.nats.cleanup()  # the processes in ``ps`` are stopped by ``processes()``
            raise

    def _start(self, ps: list[Proc], wf: Path, n: int, workers: int) -> None:
        tmp = self.tmp
        sim_port, self.sbx_port = free_port(), free_port()
        self.sbx_url = f"http://127.0.0.1:{self.sbx_port}"
        self.out = tmp / "out.jsonl"
        ps.append(Proc(["sim-llm", "--port", str(sim_port)], tmp / "sim.log"))
        self.sandbox = Proc(self.sandbox_args(), tmp / "sandbox.log")
        ps.append(self.sandbox)
        wait_port(sim_port)
        wait_port(self.sbx_port)
        sub = mx("submit", str(wf), "--nats", self.nats.url)
        assert sub.returncode == 0, sub.stderr
        self.workers = [Proc(["worker", str(wf), "--role", "all", "--nats", self.nats.url,
                              "--llm-url", f"http://127.0.0.1:{sim_port}/v1",
                              "--sandbox-url", self.sbx_url, "--drain-timeout", "5"],
                             tmp / f"worker{i}.log") for i in range(workers)]
        ps.extend(self.workers)
        self.sink = Proc(["sink", str(wf), "--nats", self.nats.url, "--out", str(self.out),
                          "--expect", str(n), "--timeout", "240"], tmp / "sink.log")
        ps.append(self.sink)

    def sandbox_args(self) -> list[str]:
        return ["sandbox-server", "--port", str(self.sbx_port), "--pool", "8", "--ttl",
                str(TTL_S)]

    def finish(self) -> list[dict[str, Any]]:
        assert self.sink.wait(timeout=240) == 0, self.sink.text()[-3000:]
        for w in self.workers:
            assert w.stop() == 0, w.text()[-3000:]
        check_exactly_once(self.out, expected_ids(self.wf), status_json(self.wf, self.nats.url))
        return read_rows(self.out)

    def close(self) -> None:
        self.nats.cleanup()


def _kill_workers_mid_trajectory(tmp: Path, n: int, kills: int) -> dict[str, Any]:
    wf = tau_workflow(tmp, n)
    with processes() as ps:
        fleet = Fleet(tmp, ps, wf, n, workers=2)
        try:
            t0 = time.monotonic()
            done_kills = 0
            for k in range(kills):
                victim = fleet.workers[k % len(fleet.workers)]
                # the event: trajectories in flight hold sandboxes right now
                wait_for(lambda: sandbox_status(fleet.sbx_url).get("leased", 0) >= 2
                         or count_lines(fleet.out) >= n, 60, "tasks holding sandboxes")
                if count_lines(fleet.out) >= n:
                    break
                victim.kill9()
                done_kills += 1
                victim.start()
            rows = fleet.finish()
            elapsed = time.monotonic() - t0
            # leases orphaned by the kills lapse within the TTL (+ one reap interval)
            wait_for(lambda: sandbox_status(fleet.sbx_url).get("leased") == 0, TTL_S + 10,
                     "every lease back in the pool")
            st = sandbox_status(fleet.sbx_url)
        finally:
            fleet.close()
    return {"rows": rows, "kills": done_kills, "elapsed_s": elapsed, "status": st}


def tool_calls(status: dict[str, Any]) -> int:
    """Tool calls the server ran: one-shot executions and calls to a session (tau's)."""
    return int(status.get("executions", 0)) + int(status.get("session_calls", 0))


def _kill_sandbox_server(tmp: Path, n: int, after_executions: int) -> dict[str, Any]:
    wf = tau_workflow(tmp, n)
    with processes() as ps:
        fleet = Fleet(tmp, ps, wf, n, workers=2)
        try:
            t0 = time.monotonic()
            wait_for(lambda: tool_calls(sandbox_status(fleet.sbx_url)) >= after_executions
                     or count_lines(fleet.out) >= n, 60, f"{after_executions} tool calls")
            killed_mid_run = count_lines(fleet.out) < n
            fleet.sandbox.kill9()
            fleet.sandbox.start()  # same port: the leases it knew are gone
            wait_port(fleet.sbx_port)
            rows = fleet.finish()
            elapsed = time.monotonic() - t0
            wait_for(lambda: sandbox_status(fleet.sbx_url).get("leased") == 0, TTL_S + 10,
                     "every lease back in the pool")
        finally:
            fleet.close()
    return {"rows": rows, "killed_mid_run": killed_mid_run, "elapsed_s": elapsed}


def _report(what: str, got: dict[str, Any]) -> int:
    rows = got["rows"]
    restarts = sum(int(r["result"].get("sandbox_restarts", 0)) for r in rows)
    restarted = sum(1 for r in rows if r["result"].get("sandbox_restarts"))
    failed = [r["error"] for r in rows if r["status"] == "failed"]
    print(f"{what}: {len(rows)} tasks exactly once, {restarted} restarted ({restarts} restarts), "
          f"{len(failed)} failed {failed[:3]}, {got['elapsed_s']:.1f}s")
    return restarts


def test_workers_killed_mid_trajectory_leak_no_lease_past_the_ttl(tmp_path: Path) -> None:
    got = _kill_workers_mid_trajectory(tmp_path, n=12, kills=2)
    assert got["kills"] >= 1
    _report("worker kill -9", got)


def test_sandbox_server_killed_mid_run_every_task_ends_once(tmp_path: Path) -> None:
    got = _kill_sandbox_server(tmp_path, n=12, after_executions=15)
    assert got["killed_mid_run"]
    restarts = _report("sandbox-server kill -9", got)
    assert restarts >= 1  # the tasks that held a sandbox lost it and started over


@pytest.mark.slow
def test_many_worker_kills_on_a_bigger_run(tmp_path: Path) -> None:
    got = _kill_workers_mid_trajectory(tmp_path, n=50, kills=8)
    assert got["kills"] >= 4
    _report("worker kill -9 x8", got)


@pytest.mark.slow
def test_sandbox_server_killed_on_a_bigger_run(tmp_path: Path) -> None:
    got = _kill_sandbox_server(tmp_path, n=50, after_executions=60)
    assert got["killed_mid_run"]
    _report("sandbox-server kill -9 (50 tasks)", got)
