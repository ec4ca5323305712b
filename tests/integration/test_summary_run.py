"""Summaries that tell the truth, on a real broker: the rows a summary shows are the lines
of the file (``--kept-only`` included), children and left-out tasks are counted apart,
the ``sink`` command says what it wrote, and a bundled workflow's figures reach
``summary.json``."""

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
from matrix_p2p.runtime.local_run import RunOptions, RunResult, run_workflow
from matrix_p2p.runtime.summary import render, summarize, write_json
from matrix_p2p.workflow import loader
from matrix_p2p.workflow.spec import WorkflowSpec
from tests.conftest import make_spec
from tests.integration.helpers import read_rows

SIEVE = """
source: {path: rows.jsonl}
roles:
  sieve: {agent: "tests.summary_agents:Sieve", llm: null, concurrency: 50}
routing: {type: cycle, roles: [sieve], max_turns: 1}
summary:
  - {label: kept documents, distinct: parent}
  - {label: questions, count: parent}
  - {label: questions per kept document, ratio: [questions, kept documents]}
  - {label: mean score, mean: result.score}
"""
# 12 documents: every third kept (2 questions each), the rest dropped
DOCS = [{"n": i, "keep": i % 3 == 0, "questions": 2, "score": i, "why": "short"}
        for i in range(12)]


async def _run(spec: WorkflowSpec, nats: EmbeddedNats, out: Path, *, kept_only: bool = False,
               limit: int | None = None, retry_failed: bool = False) -> RunResult:
    opts = RunOptions(out=str(out), nats=ConnectOptions(url=nats.url, name="test"),
                      progress=False, kept_only=kept_only, limit=limit, drain_timeout_s=10,
                      retry_failed=retry_failed)
    async with asyncio.timeout(120):
        return await run_workflow(spec, opts, asyncio.Event())


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


async def test_kept_only_rows_are_the_lines_of_the_file(nats_server: EmbeddedNats,
                                                        tmp_path: Path) -> None:
    spec = make_spec(tmp_path, SIEVE, DOCS)
    out = tmp_path / "questions.jsonl"
    for attempt in ("first", "again"):  # the second run resumes: nothing new, same counts
        s = summarize(await _run(spec, nats_server, out, kept_only=True), spec)
        # 4 kept documents fan out 8 questions: the file holds the 8 questions; the 8
        # dropped documents and the 4 fanned-out parents are left out
        assert (s.rows, _lines(out)) == (8, 8), attempt
        assert (s.left_out, _lines(Path(f"{out}.skipped"))) == (12, 12), attempt
        assert (s.tasks, s.children, s.expected) == (20, 8, 12), attempt
        head = render(s).splitlines()[0]
        assert head.endswith(f"; 8 rows in {out} (12 tasks left out by --kept-only: "
                             f"ids in {out}.skipped)"), head
        # the figures over the rows in the file, read back from it on the second run
        figs = {v.label: v.value for v in s.figures}
        assert figs == {"kept documents": 4, "questions": 8, "questions per kept document": 2.0,
                        "mean score": 4.5}, attempt
    assert all(r["parent"] for r in read_rows(out))


async def test_without_kept_only_every_task_is_a_row(nats_server: EmbeddedNats,
                                                     tmp_path: Path) -> None:
    spec = make_spec(tmp_path, SIEVE, DOCS)
    out = tmp_path / "all.jsonl"
    s = summarize(await _run(spec, nats_server, out), spec)
    assert (s.rows, _lines(out), s.tasks, s.left_out, s.children) == (20, 20, 20, 0, 8)
    assert s.filters is not None
    assert (s.filters.kept, s.filters.filtered, s.filters.by_reason) == (8, 8, {"short": 8})
    assert s.filters.fanned_out == 4
    # the documents read the same against their questions when the parents are rows too
    assert {v.label: v.value for v in s.figures}["questions per kept document"] == 2.0


async def test_a_retried_task_counts_once_in_the_figures(nats_server: EmbeddedNats,
                                                        tmp_path: Path) -> None:
    spec = make_spec(tmp_path, SIEVE + "  - {label: done, rate: status, equals: done}\n",
                     [{"n": i, "keep": False, "fail_first": i < 2} for i in range(6)])
    out = tmp_path / "o.jsonl"
    first = summarize(await _run(spec, nats_server, out), spec)
    assert (first.rows, first.output_failed) == (6, 2)
    assert {v.label: (v.value, v.rows) for v in first.figures}["done"] == (round(4 / 6, 6), 6)
    # the new attempts replace the failed rows: the figures are over the file's 6 rows
    again = summarize(await _run(spec, nats_server, out, retry_failed=True), spec)
    assert (again.rows, _lines(out), again.output_failed, again.retried) == (6, 6, 0, 2)
    assert {v.label: (v.value, v.rows) for v in again.figures}["done"] == (1.0, 6)


def test_the_sink_command_says_what_it_wrote(nats_server: EmbeddedNats, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    spec = make_spec(tmp_path, SIEVE, DOCS)
    asyncio.run(_run(spec, nats_server, tmp_path / "first.jsonl"))
    capsys.readouterr()
    out = tmp_path / "again.jsonl"  # a new file: the sink rebuilds it from the results stream
    assert cli.main(["sink", spec.path, "--nats", nats_server.url, "--out", str(out),
                     "--kept-only", "--expect", "20", "--timeout", "60"]) == 0
    said = capsys.readouterr().err.strip().splitlines()
    assert said[:2] == [
        f"8 rows in {out}; its tasks: 20 done, 0 failed, 8 of them fan-out children; "
        f"12 more left out by --kept-only (ids in {out}.skipped)",
        "  this run: 0 done and 0 failed as they finished, 20 rebuilt from the results "
        "stream, 0 duplicates skipped"], said
    assert _lines(out) == 8
    assert "  kept documents               4" in said


async def test_a_bundled_workflow_writes_its_figures_to_summary_json(
        nats_server: EmbeddedNats, tmp_path: Path) -> None:
    spec = msgspec.structs.replace(loader.load("coral"), name=f"coralsum{os.getpid()}")
    out = tmp_path / "coral.jsonl"
    s = summarize(await _run(spec, nats_server, out, limit=5), spec)
    rows = read_rows(out)
    assert len(rows) == s.rows == 5
    data = json.loads(write_json(s).read_text())
    figures = {f["label"]: f for f in data["figures"]}
    assert list(figures) == ["agreement", "accuracy"]
    judged = [r["result"] for r in rows if "agreed" in r["result"]]
    agreed = sum(1 for r in judged if r["agreed"])
    assert figures["agreement"] == {
        "label": "agreement", "kind": "rate", "field": "result.agreed",
        "value": round(agreed / len(judged), 6), "rows": len(judged),
        "missing": 5 - len(judged), "hits": agreed}
    assert figures["accuracy"]["hits"] == sum(1 for r in judged if r["correct"])
    assert data["filters"] is None
