"""Every bundled workflow end to end with ``--llm-url`` against real vLLM, and a vLLM
replica killed with ``kill -9`` mid-run with nothing lost (``make test-vllm``).

The model is tiny and random, so what it says is gibberish: a row may fail (a tau
trajectory whose model never calls a tool grows until vLLM refuses the prompt as
over ``max_model_len``: a permanent failure, not retried), but the run must end with
a clear exit status, one row per input, and every LLM turn names the served model and
its ``finish_reason``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.procs import Proc, env, wait_port
from tests.vllm import env as venv
from tests.vllm.env import free_port

pytestmark = pytest.mark.vllm

FINISH = {"stop", "length", "tool_calls"}


def read_rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def run(workflow: str, limit: int, urls: list[str], cwd: Path,
        timeout: float = 540) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    out = cwd / "out.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "matrix_p2p", "run", workflow, "--limit", str(limit),
         "--llm-url", ",".join(urls), "--out", str(out), "--store", str(cwd / "store"),
         "--no-progress", "--sync-interval"],
        capture_output=True, text=True, timeout=timeout, env=env(), cwd=cwd,
        stdin=subprocess.DEVNULL)
    return proc, read_rows(out) if out.exists() else []


def check_rows(proc: subprocess.CompletedProcess[str], rows: list[dict[str, Any]],
               limit: int) -> dict[str, int]:
    """One row per input; each LLM turn names the served model and a finish reason; a
    failed row says why on one line; exit status 0 exactly when every row is done."""
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    assert len(rows) == limit and len({r["id"] for r in rows}) == limit, [r["id"] for r in rows]
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
        assert row["status"] in ("done", "failed"), row["status"]
        if row["status"] == "failed":
            assert row["error"] and "\n" not in row["error"], row["error"]
        for turn in row.get("dialogue") or []:
            if turn.get("model"):  # an LLM turn (tool results and user turns have none)
                assert turn["model"] == venv.MODEL_NAME, turn
                assert turn["finish_reason"] in FINISH, turn
    assert (proc.returncode == 0) == (statuses.get("failed", 0) == 0), (statuses, proc.stderr[-2000:])
    return statuses


@pytest.mark.parametrize(("workflow", "limit"), [("coral", 4), ("natural_reasoning", 4)])
def test_bundled_workflow_against_vllm(
    workflow: str, limit: int, vllm_server: venv.VLLMServer, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    proc, rows = run(workflow, limit, [vllm_server.url], tmp_path)
    statuses = check_rows(proc, rows, limit)
    print(f"{workflow}: {statuses} in {time.monotonic() - t0:.1f}s")
    assert any(t.get("model") for r in rows for t in r.get("dialogue") or [])


def test_tau_against_vllm_ends_each_trajectory(vllm_server: venv.VLLMServer,
                                               tmp_path: Path) -> None:
    t0 = time.monotonic()
    proc, rows = run("tau", 2, [vllm_server.url], tmp_path)
    statuses = check_rows(proc, rows, 2)
    print(f"tau: {statuses} in {time.monotonic() - t0:.1f}s")
    for row in rows:
        if row["status"] == "failed" and "context length" in row["error"]:
            # vLLM's reason, once: a prompt over max_model_len is not retried
            assert "maximum context length is" in row["error"], row["error"]


def _served(base_url: str) -> float:
    with urllib.request.urlopen(base_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith(("vllm:request_success_total{", "vllm:num_requests_running{")))


def test_a_replica_killed_mid_run_loses_nothing(vllm_server: venv.VLLMServer,
                                                tmp_path: Path) -> None:
    """Two replicas serving the same model: real vLLM and a simulator process (a second
    vLLM takes minutes to start on a loaded machine). The simulator is killed with
    ``kill -9`` once it has served this run; every row is written once, none failed
    for the dead replica."""
    port = free_port()
    victim = Proc(["sim-llm", "--port", str(port), "--model", venv.MODEL_NAME,
                   "--max-model-len", str(venv.MAX_MODEL_LEN), "--slow-factor", "4"],
                  tmp_path / "sim.log")
    limit = 12
    out = tmp_path / "out.jsonl"
    try:
        wait_port(port)
        sim_url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "matrix_p2p", "run", "coral", "--limit", str(limit),
             "--llm-url", f"{vllm_server.url},{sim_url}/v1", "--out", str(out),
             "--store", str(tmp_path / "store"), "--no-progress", "--sync-interval"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
            cwd=tmp_path, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300
            # the victim is killed once it has work of this run in hand
            while _served(sim_url) < 1:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the victim never got a request"
                time.sleep(0.1)  # a child server's counters: there is no event to wait on
            victim.kill()
            stdout, stderr = proc.communicate(timeout=540)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        victim.stop()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    rows = read_rows(out)
    statuses = check_rows(done, rows, limit)
    print(f"kill -9 of one of two replicas: {statuses}")
    # nothing lost: no row failed for the dead replica; its requests went to the other
    for row in rows:
        if row["status"] == "failed":
            assert "unavailable" not in row["error"] and sim_url not in row["error"], row
