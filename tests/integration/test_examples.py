"""The examples under examples/ run end to end on the embedded default (docs/agents.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.procs import ROOT, env, mx

EXAMPLES = ROOT / "examples"


def test_the_worked_example_runs_with_its_agents_next_to_it(tmp_path: Path) -> None:
    out = tmp_path / "review.jsonl"
    r = mx("run", str(EXAMPLES / "review" / "review.yaml"), "--store", str(tmp_path / "st"),
           "--out", str(out), "--no-progress", cwd=tmp_path, timeout=180)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(row["id"] for row in rows) == ["q1-t0", "q2-t0", "q3-t0", "q4-t0"]
    for row in rows:
        assert row["status"] == "done" and row["result"]["accepted"] is True
        roles = [t["role"] for t in row["dialogue"]]
        assert roles[:2] == ["writer", "reviewer"] and roles[-1] == "reviewer"
        assert row["source"] == "questions.jsonl"


def _example(mode: str, out: Path) -> str:
    r = subprocess.run([sys.executable, str(EXAMPLES / "embedding.py"), mode, str(out)],
                       capture_output=True, text=True, timeout=180, env=env(), cwd=out.parent,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    # the example's simulator logs before the API is called (test_api.py checks quietness)
    return r.stdout.strip().splitlines()[-1]


def test_embedding_run_returns_the_summary(tmp_path: Path) -> None:
    assert _example("run", tmp_path / "a") == (
        "run: 4 rows, 4 done, 0 failed (summary in review.jsonl.summary.json)")
    assert len((tmp_path / "a" / "review.jsonl").read_text().splitlines()) == 4


def test_embedding_serve_runs_workers_inside_a_service(tmp_path: Path) -> None:
    out = _example("serve", tmp_path / "b")
    assert out.startswith("serve: 2 rows (2 done), ") and "hops in this service" in out


async def test_run_async_takes_a_spec_built_in_python(tmp_path: Path) -> None:
    import pytest

    import matrix_p2p
    from matrix_p2p.workflow.spec import parse

    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"n": i}) + "\n" for i in range(5)))
    spec = parse(f"""
name: inpython
source: {{path: {tmp_path / 'rows.jsonl'}}}
roles:
  teacher: {{agent: "matrix_p2p_agents.dummy:Talker", llm: null}}
  judge: {{agent: "matrix_p2p_agents.dummy:Decider", llm: null}}
routing: {{type: cycle, roles: [teacher, judge], stop_when: agreed, max_turns: 10}}
""")
    result = await matrix_p2p.run_async(spec, out=tmp_path / "o.jsonl", store=tmp_path / "st")
    assert (result.rows, result.dataset_done, result.dataset_failed) == (5, 5, 0)
    with pytest.raises(matrix_p2p.ConfigError, match=r"use `await matrix_p2p\.run_async"):
        matrix_p2p.run(spec)
