"""A bundled workflow run on the simulator over a real nats-server, then exported: every row
the run wrote is an example or counted with its reason, and the examples are the
student's turns of those rows."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import msgspec
import pytest

from matrix_p2p import cli
from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.bus import ConnectOptions
from matrix_p2p.runtime.local_run import RunOptions, run_workflow
from matrix_p2p.workflow import loader
from tests.integration.helpers import read_rows


async def test_coral_run_then_exported(nats_server: EmbeddedNats, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    spec = msgspec.structs.replace(loader.load("coral"), name=f"coralexp{os.getpid()}")
    out = tmp_path / "coral.jsonl"
    opts = RunOptions(out=str(out), nats=ConnectOptions(url=nats_server.url, name="test"),
                      progress=False, limit=6, drain_timeout_s=10)
    async with asyncio.timeout(120):
        await run_workflow(spec, opts, asyncio.Event())
    rows = read_rows(out)
    assert len(rows) == 6

    # the rows name a workflow that is not bundled (renamed for the test): --workflow says which
    assert cli.main(["export", str(out), "--to", str(tmp_path / "x.jsonl")]) == 2
    assert "give its file with --workflow" in capsys.readouterr().err

    code = cli.main(["export", str(out), "--workflow", "coral", "--split", "train=0.5,test=0.5",
                     "--to", str(tmp_path / "sft-{split}.jsonl")])
    err = capsys.readouterr().err
    assert code == 0, err
    examples = {s: [json.loads(x) for x in (tmp_path / f"sft-{s}.jsonl").read_text().splitlines()]
                for s in ("train", "test")}
    by_id = {e["id"]: e for ex in examples.values() for e in ex}
    done = [r for r in rows if r["status"] == "done"]
    assert len(by_id) == sum(len(v) for v in examples.values())  # each row once
    assert sorted(by_id) == sorted(r["id"] for r in done)  # a done coral row always has a student turn
    for r in done:
        msgs = by_id[r["id"]]["messages"]
        assert [m["content"] for m in msgs if m["role"] == "assistant"] == \
            [t["content"] for t in r["dialogue"] if t["role"] == "student"]
        assert all(m["role"] != "judge" for m in msgs)
        assert msgs[0] == {"role": "system", "content": spec.roles["student"].system}
    failed = len(rows) - len(done)
    assert (f"{failed} rows left out" in err) == bool(failed)

    # one trial per row: no preference pair, and every row says why
    code = cli.main(["export", str(out), "--workflow", "coral", "--format", "preference",
                     "--by", "result.correct", "--to", str(tmp_path / "dpo.jsonl")])
    err = capsys.readouterr().err
    assert code == 1
    assert err == (f"matrix_p2p: error: no examples: 6 rows read; left out: only one trial of its "
                   f"row: {len(done)}" + (f"; status failed (--include-failed keeps them): {failed}"
                                           if failed else "") + "\n")
    assert not (tmp_path / "dpo.jsonl").exists()
