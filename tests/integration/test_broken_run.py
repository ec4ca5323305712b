"""A clearly broken run stops (limits.abort_on_failures, runset/broken.py): when its first
tasks mostly fail the same way, ``run`` stops its workers, exits 1 with the reason, and
leaves the unfinished tasks in the store (not failed) for the next run to finish."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from matrix_p2p.api import RunAborted, run_async
from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.bus import ConnectOptions
from matrix_p2p.runtime.local_run import RunOptions, run_workflow
from matrix_p2p.runtime.summary import summary_path
from tests import fault_agents
from tests.conftest import make_spec
from tests.integration.helpers import read_rows
from tests.procs import mx

BROKEN = """
source: {path: rows.jsonl}
roles:
  a: {agent: "tests.fault_agents:Broken", llm: null}
routing: {type: cycle, roles: [a], max_turns: 1}
limits: {ack_wait_s: 5, retry_backoff_s: 0.05}
"""
BUG = "bug in agent 'a' raised AttributeError: 'Row' object has no attribute 'question_17'"


async def test_a_broken_run_stops_and_the_next_run_finishes_it(
        tmp_path: Path, nats_server: EmbeddedNats) -> None:
    # 20 rows hit the bug; 30 wait for the fix, so they are unfinished when the run stops
    rows = [{"behaviour": "bug"}] * 20 + [{"behaviour": "ok"}] * 30
    spec = make_spec(tmp_path, BROKEN, rows)
    fault_agents.FIXED[spec.name] = asyncio.Event()
    out = tmp_path / "out.jsonl"
    opts = RunOptions(nats=ConnectOptions(url=nats_server.url, name="test"), out=str(out),
                      progress=False, drain_timeout_s=0.2)
    async with asyncio.timeout(30):  # without the guard it would wait for the fix forever
        first = await run_workflow(spec, opts, asyncio.Event())
    # the default rule: 16 of the first 20 finished tasks failed the same way
    assert first.aborted == f'16 of the first 16 tasks failed with "{BUG}"'
    assert not first.interrupted
    written = read_rows(out)
    assert 16 <= len(written) <= 20
    assert {r["status"] for r in written} == {"failed"}
    assert {r["input"]["behaviour"] for r in written} == {"bug"}  # the waiting ones: not failed

    fault_agents.FIXED[spec.name].set()  # "fix it, then re-run with --retry-failed"
    async with asyncio.timeout(60):
        second = await run_async(spec, nats=nats_server.url, out=out, retry_failed=True)
    assert second.aborted is None
    assert (second.dataset_done, second.dataset_failed, second.rows) == (50, 0, 50)
    assert sorted(r["row_index"] for r in read_rows(out)) == list(range(50))


# The `dummy:Flaky` agent fails `bug` rows at once and hands
# `retry_always` rows back for a minute (so they are unfinished when the run stops).
FLAKY = """
source: {path: rows.jsonl}
roles:
  a: {agent: "matrix_p2p_agents.dummy:Flaky", llm: null}
routing: {type: cycle, roles: [a], max_turns: 1}
limits:
  ack_wait_s: 5
  retry_backoff_s: 60
  max_deliveries: 50
  abort_on_failures: {first: 10, share: 0.5}
"""
FLAKY_BUG = "bug in agent 'a' raised AttributeError: 'dict' object has no attribute 'no_such_method'"


def test_run_stops_with_exit_1_and_the_reason(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    rows = [{"behaviour": "bug"}] * 10 + [{"behaviour": "retry_always"}] * 10
    spec = make_spec(tmp_path, FLAKY, rows)
    out = tmp_path / "out.jsonl"
    r = mx("run", spec.path, "--no-progress", "--nats", nats_server.url, "--out", str(out),
           "--accept-failures", timeout=40)  # a broken run is never exit 0
    assert r.returncode == 1, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last == (f'matrix_p2p: error: stopped: 5 of the first 5 tasks failed with '
                    f'"{FLAKY_BUG}": fix it, then re-run with --retry-failed (the unfinished '
                    "tasks stay in the store)")
    written = read_rows(out)
    assert 5 <= len(written) <= 10 and {r["status"] for r in written} == {"failed"}
    summary = json.loads(summary_path(str(out)).read_text())
    assert summary["aborted"] == f'5 of the first 5 tasks failed with "{FLAKY_BUG}"'
    assert f"{spec.name}: stopped in " in r.stderr  # the summary's head


async def test_the_api_raises_run_aborted(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    spec = make_spec(tmp_path, FLAKY.replace("{first: 10, share: 0.5}", "{first: 4, share: 0.5}"),
                     [{"behaviour": "bug"}] * 3 + [{"behaviour": "retry_always"}] * 5)
    with pytest.raises(RunAborted) as exc:
        async with asyncio.timeout(30):
            await run_async(spec, nats=nats_server.url, out=tmp_path / "out.jsonl")
    assert str(exc.value) == (
        f'stopped: 2 of the first 2 tasks failed with "{FLAKY_BUG}": fix it, then re-run with '
        "--retry-failed (the unfinished tasks stay in the store)")
    result = exc.value.result
    assert result.aborted == f'2 of the first 2 tasks failed with "{FLAKY_BUG}"'
    assert result.dataset_done == 0 and 2 <= result.dataset_failed <= 3
