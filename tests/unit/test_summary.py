"""``run``'s end-of-run summary: the table, tokens by role, tokens/s, cost, and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path

from matrix_p2p.envelope import Usage
from matrix_p2p.runtime.local_run import RunResult
from matrix_p2p.runtime.source import SubmitResult
from matrix_p2p.runtime.summary import render, summarize, summary_path, write_json
from matrix_p2p.runtime.worker import WorkerStats
from tests.conftest import make_spec

PRICED = """
source: {path: rows.jsonl}
resources:
  llm:
    default: {price_per_1k_prompt: 0.5, price_per_1k_completion: 2.0}
    free: {}
roles:
  teacher: {agent: "matrix_p2p_agents.dummy:Talker"}
  judge:   {agent: "matrix_p2p_agents.dummy:Decider", llm: free}
  student: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
routing: {type: cycle, roles: [teacher, judge], max_turns: 4}
"""


def result(out: Path, usage: dict[str, Usage]) -> RunResult:
    return RunResult(out=str(out), rows=10, expected=12, done=9, failed=1, elapsed_s=4.0,
                     completion_tokens=sum(u.completion_tokens for u in usage.values()),
                     interrupted=True, submit=SubmitResult(), worker=WorkerStats(),
                     dataset_done=9, dataset_failed=3, retried=2, usage_by_role=usage)


def test_summary_table_and_json_with_cost(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, PRICED, [])
    out = tmp_path / "data" / "out.jsonl"
    s = summarize(result(out, {"teacher": Usage(prompt_tokens=4000, completion_tokens=1000),
                               "judge": Usage(prompt_tokens=2000, completion_tokens=200)}), spec)
    assert (s.done, s.failed, s.rows, s.expected, s.interrupted) == (9, 1, 10, 12, True)
    assert [r.role for r in s.roles] == ["judge", "teacher"]
    assert s.roles[1].cost == 4000 * 0.5 / 1000 + 1000 * 2.0 / 1000  # 4.0
    assert s.roles[0].cost is None  # its resource has no price
    assert s.cost == 4.0
    assert (s.prompt_tokens, s.completion_tokens) == (6000, 1200)
    assert s.tokens_per_s == 1800.0 and s.completion_tokens_per_s == 300.0 and s.tasks_per_s == 2.5
    table = render(s).splitlines()
    assert table[0] == f"{spec.name}: interrupted in 4.0s; 10/12 rows in {out}"
    assert table[1].split() == ["tasks", "this", "run", "9", "done", "1", "failed", "2.5", "tasks/s"]
    assert table[2] == "  output: 9 done, 3 failed (2 retried)"
    assert table[4].split() == ["judge", "2,000", "200", "-"]
    assert table[5].split() == ["teacher", "4,000", "1,000", "4.0000"]
    assert table[6].split() == ["total", "6,000", "1,200", "4.0000"]
    assert table[7].split() == ["tokens/s", "1,800", "(generated", "300)"]

    path = write_json(s)
    assert path == summary_path(out) == out.with_name("out.jsonl.summary.json")
    data = json.loads(path.read_text())
    assert data["cost"] == 4.0 and data["roles"][1] == {
        "role": "teacher", "prompt_tokens": 4000, "completion_tokens": 1000, "cost": 4.0}


def test_summary_without_prices_or_tokens(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, PRICED.replace("{price_per_1k_prompt: 0.5, price_per_1k_completion: 2.0}",
                                              "{}"), [])
    s = summarize(result(tmp_path / "o.jsonl", {}), spec)
    assert s.cost is None and s.roles == [] and s.tokens_per_s == 0.0
    assert render(s).splitlines()[-2].split() == ["total", "0", "0", "-"]


def test_summary_says_what_sandbox_leases_were_left(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, PRICED, [])
    r = result(tmp_path / "o.jsonl", {})
    assert "sandbox leases" not in render(summarize(r, spec))  # no sandbox server in this run
    r.sandbox_leased = 0
    assert render(summarize(r, spec)).splitlines()[-1] == "  sandbox leases held at the end: 0"


def test_summary_counts_children_and_filters(tmp_path: Path) -> None:
    from matrix_p2p.runtime.filter_counts import FilterCounts

    spec = make_spec(tmp_path, PRICED, [])
    r = result(tmp_path / "o.jsonl", {})
    r.rows, r.expected = 15, 12
    r.filters = FilterCounts(kept=10, filtered={"langid": 3})
    s = summarize(r, spec)
    lines = render(s).splitlines()
    assert lines[0].endswith(f"15/12 (+3 children) rows in {tmp_path / 'o.jsonl'}")
    assert lines[-1] == "  filters: kept 10, filtered 3 (langid 3), failed 0"
