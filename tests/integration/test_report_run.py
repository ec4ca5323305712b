"""A bundled workflow run on the simulator over a real nats-server, then ``report``: its
figures are the run's own (the sink's), and its tokens by role are what the run counted,
each token once."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import msgspec
import pytest

from matrix_p2p import cli
from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.bus import ConnectOptions
from matrix_p2p.report import figures
from matrix_p2p.report.job import make_report
from matrix_p2p.runtime.local_run import RunOptions, run_workflow
from matrix_p2p.workflow import loader


@pytest.mark.parametrize(("workflow", "limit"), [("coral", 6), ("natural_reasoning", 6)])
async def test_report_of_a_run_says_what_the_run_said(
        workflow: str, limit: int, nats_server: EmbeddedNats, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    spec = msgspec.structs.replace(loader.load(workflow), name=f"{workflow}rep{os.getpid()}")
    out = tmp_path / f"{workflow}.jsonl"
    opts = RunOptions(out=str(out), nats=ConnectOptions(url=nats_server.url, name="test"),
                      progress=False, limit=limit, drain_timeout_s=10)
    async with asyncio.timeout(180):
        result = await run_workflow(spec, opts, asyncio.Event())

    r = make_report(out, workflow=workflow)
    assert r.rows == result.file_rows
    assert r.by_status.get("done", 0) == result.dataset_done
    assert r.by_status.get("failed", 0) == result.dataset_failed
    assert figures.render(r.figures) == figures.render(result.figures)
    assert r.tokens == {role: (u.prompt_tokens, u.completion_tokens)
                        for role, u in result.usage_by_role.items()
                        if u.prompt_tokens or u.completion_tokens}
    assert r.duplicate_ids == {}

    assert cli.main(["report", str(out), "--workflow", workflow,
                     "--html", str(tmp_path / "r.html")]) == 0
    printed = capsys.readouterr().out
    assert all(line in printed for line in figures.render(result.figures))
