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
                     dataset_done=9, dataset_failed=3, retried=2, usage_by_role=usage,
                     file_rows=10)


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
    assert table[0] == f"{spec.name}: interrupted in 4.0s; 10 rows in {out}"
    assert table[1].split() == ["tasks", "this", "run", "9", "done", "1", "failed", "2.5", "tasks/s"]
    assert table[2] == "  output: 9 done, 3 failed (2 retried); 12 tasks asked for"
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
    # kept-only: 6 rows in the file (the kept children), 9 tasks left out; 4 of the 15
    # tasks are fan-out children (counted by id, not as rows beyond the expected tasks)
    r.rows, r.file_rows, r.left_out, r.children, r.expected = 15, 6, 9, 4, 12
    r.filters = FilterCounts(kept=10, filtered={"langid": 3, "dedup": 1, "quality": 3},
                             fanned_out=2)
    s = summarize(r, spec)
    assert (s.rows, s.tasks, s.left_out, s.children) == (6, 15, 9, 4)
    lines = render(s).splitlines()
    out = tmp_path / "o.jsonl"
    assert lines[0].endswith(f"; 6 rows in {out} (9 tasks left out by --kept-only: "
                             f"ids in {out}.skipped)")
    assert lines[2].endswith("; 12 tasks asked for, 4 fan-out children")
    assert lines[-1] == ("  filters: kept 10, filtered 7 (langid 3, quality 3, dedup 1), "
                         "fanned out 2, failed 0")


def test_summary_json_holds_the_filters_as_a_mapping(tmp_path: Path) -> None:
    from matrix_p2p.runtime.filter_counts import FilterCounts

    spec = make_spec(tmp_path, PRICED, [])
    r = result(tmp_path / "o.jsonl", {})
    r.filters = FilterCounts(kept=16, failed=1, filtered={"quality": 30, "langid": 54})
    data = json.loads(write_json(summarize(r, spec)).read_text())
    assert data["filters"] == {"kept": 16, "filtered": 84,
                               "by_reason": {"langid": 54, "quality": 30},
                               "fanned_out": 0, "failed": 1}
    assert list(data["filters"]["by_reason"]) == ["langid", "quality"]  # most first
    assert (data["rows"], data["tasks"], data["left_out"], data["children"]) == (10, 10, 0, 0)
    # a workflow without filters: null, and no filters line
    r.filters = FilterCounts()
    s = summarize(r, spec)
    assert json.loads(write_json(s).read_text())["filters"] is None
    assert not any("filters" in line for line in render(s).splitlines())


def test_summary_shows_the_workflows_figures_first(tmp_path: Path) -> None:
    from matrix_p2p.report.figures import Figures

    spec = make_spec(tmp_path, PRICED + """
summary:
  - {label: mean reward, mean: result.reward}
  - {label: verdicts, counts: result.verdict}
""", [])
    figs = Figures(spec.summary)
    for reward, verdict in ((1.0, "pass"), (0.5, "fail"), (None, "pass")):
        figs.add({"result": {"reward": reward, "verdict": verdict}})
    r = result(tmp_path / "o.jsonl", {})
    r.figures = figs.results()
    s = summarize(r, spec)
    assert render(s).splitlines()[3:5] == [
        "  mean reward  0.75 (over 2 rows, 1 missing)",
        "  verdicts     pass 2, fail 1"]
    data = json.loads(write_json(s).read_text())
    assert data["figures"] == [
        {"label": "mean reward", "kind": "mean", "field": "result.reward", "value": 0.75,
         "rows": 2, "missing": 1},
        {"label": "verdicts", "kind": "counts", "field": "result.verdict",
         "value": {"pass": 2, "fail": 1}, "rows": 3, "missing": 0}]
