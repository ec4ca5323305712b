"""The tool-use workflows end to end on a real broker, simulator and sandbox server (real
bwrap): every task exactly once, the trace complete, and no lease held afterwards."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from pathlib import Path

import msgspec
import pytest
from matrix_p2p_agents.code_verify import HARNESS

from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.bus import ConnectOptions
from matrix_p2p.runtime.local_run import RunOptions, RunResult, run_workflow
from matrix_p2p.sandbox import SandboxClient, SandboxConfig, SandboxServer
from matrix_p2p.workflow import loader
from matrix_p2p.workflow.spec import WorkflowSpec
from tests.integration.helpers import read_rows

_n = itertools.count()


def bundled(name: str) -> WorkflowSpec:
    """A bundled workflow under a fresh name: its own streams on the shared test broker."""
    return msgspec.structs.replace(loader.load(name), name=f"{name}{next(_n)}x{os.getpid()}")


async def run(spec: WorkflowSpec, nats: EmbeddedNats, tmp: Path, limit: int,
              sandbox_urls: list[str]) -> tuple[RunResult, list[dict[str, object]]]:
    opts = RunOptions(limit=limit, out=str(tmp / f"{spec.name}.jsonl"),
                      nats=ConnectOptions(url=nats.url, name="test"), llm_urls=[],
                      sandbox_urls=sandbox_urls, progress=False, drain_timeout_s=10)
    async with asyncio.timeout(120):
        result = await run_workflow(spec, opts, asyncio.Event())
    return result, read_rows(Path(result.out))


async def test_tau_runs_every_task_once_with_a_full_trace_and_no_lease_left(
        nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with SandboxServer(SandboxConfig(pool_size=4)) as srv:
        result, rows = await run(bundled("tau"), nats_server, tmp_path, 8, [srv.url])
        async with SandboxClient(srv.url) as client:
            status = await client.status()
    assert result.rows == 8 and len({r["id"] for r in rows}) == 8 == len(rows)
    assert status["leased"] == 0 and status["executions"] == 0  # no process per tool call:
    assert status["session_calls"] > 0 and status["sessions"] == 0  # sessions, all ended
    for row in rows:
        assert row["status"] == "done", row["error"]
        res = row["result"]
        assert isinstance(res, dict)
        assert res["termination"] in ("user_stop", "transfer", "out_of_scope", "max_steps",
                                      "max_errors")
        assert res["reward"] in (0.0, 1.0) and isinstance(res["db_match"], bool)
        assert isinstance(res["communicate_match"], bool)
    turns = [t for r in rows for t in r["dialogue"]]  # type: ignore[attr-defined]
    assert {t["role"] for t in turns} == {"user", "assistant", "tool"}
    tools = [t for t in turns if t["role"] == "tool"]
    ran = [t for t in tools if t["meta"]["sandbox"]]
    assert ran, "no tool call ran in a sandbox"
    for t in ran:
        assert t["meta"]["sandbox_server"] == srv.url and t["elapsed_s"] > 0
        assert {"name", "arguments", "tool_call_id", "ok"} <= set(t["meta"])
        assert t["content"]


async def test_code_verify_starts_its_own_sandbox_server_and_leaves_no_lease(
        nats_server: EmbeddedNats, tmp_path: Path) -> None:
    result, rows = await run(bundled("code_verify"), nats_server, tmp_path, 6, [])
    assert result.sandbox_leased == 0
    assert len(rows) == 6 == len({r["id"] for r in rows})
    for row in rows:
        res = row["result"]
        assert isinstance(res, dict) and row["status"] == "done"
        assert res["verdict"] in ("pass", "fail", "error", "timeout") and res["sandbox"]


@pytest.mark.parametrize(("code", "verdict", "passed", "failed"), [
    ("def add(a, b):\n    return a + b\n", "pass", 2, 0),
    ("def add(a, b):\n    return a - b\n", "fail", 0, 2),
    ("def add(a, b) return\n", "error", 0, 0),
])
async def test_the_harness_gives_the_verdict_in_the_sandbox(
        code: str, verdict: str, passed: int, failed: int) -> None:
    tests = "def test_a():\n    assert add(1, 2) == 3\n\ndef test_b():\n    assert add(2, 2) == 4\n"
    async with SandboxServer(SandboxConfig(pool_size=1)) as srv, SandboxClient(srv.url) as c:
        lease = await c.acquire("t")
        got = await c.execute(lease, ["python3", "-I", "-S", "run_tests.py"],
                              files={"solution.py": code, "tests.py": tests,
                                     "run_tests.py": HARNESS})
    summary = json.loads(got.stdout.strip().splitlines()[-1])
    assert summary["verdict"] == verdict
    assert summary.get("passed", 0) == passed and summary.get("failed", 0) == failed
    assert got.returncode == {"pass": 0, "fail": 1, "error": 2}[verdict]


def test_sandbox_server_flag_mistakes_are_one_line() -> None:
    from tests.procs import mx

    got = mx("sandbox-server", "--pool", "0", "--port", "0", timeout=60)
    assert got.returncode == 2
    assert got.stderr.strip().splitlines()[-1] == "matrix_p2p: error: sandbox: --pool must be >= 1"
