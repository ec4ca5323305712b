"""``python -m matrix_p2p report``: its figures checked against the rows they come from
(rows written by ``runtime/rowformat.to_row``, the sink's own row format, and the real
rows of bundled workflows in ``export_rows/``), the text and the HTML page, and one-line
errors with exit status 2 for a file that is not a run's output."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from matrix_p2p import cli
from matrix_p2p.envelope import Task, Turn, Usage
from matrix_p2p.report import html, stats, text
from matrix_p2p.report.job import make_report
from matrix_p2p.runtime.files import write_parquet
from matrix_p2p.runtime.rowformat import to_row
from matrix_p2p.workflow import loader

ROWS = Path(__file__).parent / "export_rows"
ROLES = ("teacher", "student", "judge")
PRICES = {"teacher": (0.5, 2.0), "student": (0.1, 0.4)}  # the judge has no price


def _turn(rng: random.Random, role: str, hop: int) -> Turn:
    return Turn(role=role, content=f"{role} says {rng.randint(0, 99)}", hop=hop,
                usage=Usage(prompt_tokens=rng.randint(10, 500), completion_tokens=rng.randint(1, 90)),
                elapsed_s=round(rng.uniform(0.01, 3.0), 6))


def synthetic_rows(n: int = 60, seed: int = 7) -> list[dict[str, Any]]:
    """Rows of every kind, as the sink writes them: done and kept, done and filtered (by
    reason), failed, with and without a reward and a verdict, one replay (its original's
    turns are in the original's row) and one fan-out child (its parent's turns likewise)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        turns = [_turn(rng, rng.choice(ROLES), h) for h in range(rng.randint(1, 6))]
        state: dict[str, Any] = {}
        status = "failed" if i % 7 == 3 else "done"
        if i % 2:
            state["reward"] = rng.choice([0.0, 0.5, 1.0])
        if i % 3:
            state["verdict"] = rng.choice(["pass", "fail", "error"])
        if status == "done" and i % 5 == 1:
            state["kept"], state["filter_reason"] = False, rng.choice(["langid", "quality"])
        elif status == "done" and i != 4:  # row 4: done with no filter status
            state["kept"] = True
        if i == 25:  # a fan-out parent: its children are the rows
            state["children"] = 2
        if i == 10:  # a replay: the first two turns are its original's
            state["replay"] = {"from_turn": 2, "from_hop": 2}
        if i == 20:  # a fan-out child: the first three are its parent's
            turns = [_turn(rng, "teacher", h) for h in range(3)] + turns
            state["spawn"] = {"index": 0, "from_turn": 3, "from_hop": 0}
        task = Task(id=f"r{i:03d}", workflow="wf", role="judge", row={"q": i}, turns=turns,
                    state=state, status=status, error="boom" if status == "failed" else None,
                    hop=len(turns) - (3 if i == 20 else 0), created_at=1.0, finished_at=2.0)
        rows.append(json.loads(json.dumps(to_row(task))))
    return rows


def own(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The row's own turns, from what the row says (``hops``: the turns of these rows,
    one per hop)."""
    return row["dialogue"][len(row["dialogue"]) - row["hops"]:]


def test_the_reports_figures_are_the_rows_figures() -> None:
    rows = synthetic_rows()
    r = stats.build(rows, prices=PRICES)
    by_hist = {h.title: h for h in r.histograms}

    assert r.rows == len(rows) and sum(r.by_status.values()) == len(rows)
    assert r.by_status == dict(Counter(x["status"] for x in rows))
    done = [x for x in rows if x["status"] == "done"]
    assert r.kept == sum(x["result"].get("kept") is True and "children" not in x for x in done)
    assert r.filtered == sum(x["result"].get("kept") is False for x in done)
    assert r.fanned_out == 1 and rows[25]["children"] == 2
    assert dict(by_hist["filter reasons"].bins) == dict(Counter(
        x["result"]["filter_reason"] for x in done if x["result"].get("kept") is False))

    rewards = [x["result"]["reward"] for x in rows if "reward" in x["result"]]
    assert dict(by_hist["reward"].bins) == {stats._label(v): n for v, n in Counter(rewards).items()}
    assert by_hist["reward"].missing == len(rows) - len(rewards)
    assert r.spreads["reward"].mean == round(sum(rewards) / len(rewards), 6)
    assert dict(by_hist["verdicts"].bins) == dict(Counter(
        x["result"]["verdict"] for x in rows if "verdict" in x["result"]))

    # turns, tokens and seconds: each counted in one row (a replay's and a child's own only)
    turns = [len(own(x)) for x in rows]
    assert r.spreads["turns per task"].n == len(rows)
    assert sum(float(lbl) * n for lbl, n in by_hist["turns per task"].bins) == sum(turns)
    assert len(own(rows[10])) == len(rows[10]["dialogue"]) - 2
    assert len(own(rows[20])) == len(rows[20]["dialogue"]) - 3
    total = [x["usage"]["total"]["prompt_tokens"] + x["usage"]["total"]["completion_tokens"]
             for x in rows]
    assert by_hist["tokens per task"].total == len(rows)
    assert r.spreads["tokens per task"].mean == round(sum(total) / len(total), 6)
    assert sum(p + c for p, c in r.tokens.values()) == sum(total)
    per_role: dict[str, list[float]] = {}
    for x in rows:
        for t in own(x):
            per_role.setdefault(t["role"], []).append(t["elapsed_s"])
    assert {role: s.n for role, s in r.latency.items()} == {k: len(v) for k, v in per_role.items()}
    for role, s in r.latency.items():
        assert s.mean == round(sum(per_role[role]) / len(per_role[role]), 6)
        assert s.max == max(per_role[role])
    assert {h.title: h.total for h in r.latency_histograms} == \
        {f"{k} latency (s)": len(v) for k, v in per_role.items()}

    # cost: every row's tokens (failed and filtered too) over the kept rows
    assert r.cost is not None
    want = sum((r.tokens[role][0] * pp + r.tokens[role][1] * pc) / 1000
               for role, (pp, pc) in PRICES.items())
    assert r.cost.total == pytest.approx(want, abs=1e-5)
    assert r.cost.per_kept_row == pytest.approx(want / r.kept, abs=1e-5)
    assert r.cost.unpriced_roles == ["judge"]
    assert r.duplicate_ids == {}


def test_a_row_twice_is_reported() -> None:
    rows = synthetic_rows(8)
    r = stats.build([*rows, rows[2]])
    assert r.duplicate_ids == {rows[2]["id"]: 2}
    assert any("1 ids appear in more than one row" in ln for ln in text.render(r))


def test_no_cost_without_prices_and_no_kept_row_gives_no_cost_per_row() -> None:
    rows = synthetic_rows(8)
    assert stats.build(rows).cost is None
    failed = [dict(x, status="failed") for x in rows]
    r = stats.build(failed, prices=PRICES)
    assert r.kept == 0 and r.cost is not None and r.cost.per_kept_row is None
    assert "cost per kept row: - (no row kept)" in "\n".join(text.render(r))


def test_a_numeric_histogram_holds_every_value_once() -> None:
    rng = random.Random(3)
    values = [rng.uniform(-5, 50) for _ in range(500)] + [50.0, -5.0]
    h = stats.numeric_histogram("x", values)
    assert len(h.bins) == stats.BINS and h.total == len(values)
    few = stats.numeric_histogram("y", [1.0, 0.0, 1.0, 1.0])
    assert few.bins == [("0", 1), ("1", 3)]


def test_the_examples_show_a_kept_a_filtered_and_a_failed_row_first() -> None:
    rows = synthetic_rows()
    notes = [ex.note for ex in stats.build(rows).examples]
    assert notes[0] == "kept" and notes[1].startswith("filtered: ") and notes[2] == "failed: boom"
    ex = stats.build(rows, examples=len(rows)).examples
    assert len({e.id for e in ex}) == len(ex) == len(rows) - 1  # no row twice, no parent


def test_the_bundled_workflows_figures_over_their_real_rows() -> None:
    rows = [json.loads(x) for x in (ROWS / "tau.jsonl").read_text().splitlines()]
    r = make_report(ROWS / "tau.jsonl")
    assert [f.label for f in r.figures] == [f.label for f in loader.load("tau").summary]
    mean = next(f for f in r.figures if f.label == "mean reward")
    assert mean.value == rows[0]["result"]["reward"] and mean.rows == 1
    calls = [c for ex in r.examples for t in ex.turns for c in t.tool_calls]
    assert calls and calls[0].startswith("calculate(")  # tau's tool calls shown
    nr = make_report(ROWS / "natural_reasoning.jsonl")
    assert nr.fanned_out == 1 and nr.filtered == 1 and nr.kept == 2
    assert {f.label: f.value for f in nr.figures}["questions"] == 2


def test_parquet_rows_give_the_same_report(tmp_path: Path) -> None:
    """Parquet holds every column in every row, null where a row had none: a null is
    an absent field (not a filter status, not a fan-out parent)."""
    rows = synthetic_rows(30)
    jsonl = tmp_path / "wf.jsonl"
    jsonl.write_text("".join(json.dumps(x) + "\n" for x in rows))
    write_parquet(jsonl, tmp_path / "wf.parquet")
    a, b = make_report(jsonl), make_report(tmp_path / "wf.parquet")
    assert (b.rows, b.by_status, b.kept, b.filtered, b.fanned_out) == \
        (a.rows, a.by_status, a.kept, a.filtered, a.fanned_out)
    assert b.histograms == a.histograms and b.tokens == a.tokens


def test_the_page_is_self_contained_and_escapes_the_rows() -> None:
    rows = synthetic_rows(12)
    r = stats.build(rows, prices=PRICES)
    page = html.render(r)
    for loads_something in ("<script", "<link", "<img", "src=", "href=", "url(", "@import",
                            "http"):
        assert loads_something not in page.lower(), loads_something
    assert page.count("<svg") == len(r.histograms) + len(r.latency_histograms) > 4
    rows[0]["dialogue"][-1]["content"] = '<script>alert("x")</script>'
    page = html.render(stats.build(rows))
    assert "<script>alert" not in page and "&lt;script&gt;alert(&quot;x&quot;)" in page


def test_report_prints_the_text_and_writes_the_page(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "wf.jsonl"
    rows = synthetic_rows(20)
    out.write_text("".join(json.dumps(x) + "\n" for x in rows))
    page = tmp_path / "r" / "report.html"
    assert cli.main(["report", str(out), "--html", str(page)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{out}: 20 rows of wf; done ")
    assert "note: no figures or prices: the rows are of workflow 'wf', which is not bundled" \
        in printed
    assert re.search(r"^turns per task \(20 values\)$", printed, re.M)
    assert page.read_text().startswith("<!DOCTYPE html>")


def _error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(["report", *args]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    lines = cap.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("matrix_p2p: error: "), cap.err
    return lines[0].removeprefix("matrix_p2p: error: ")


def test_bad_inputs_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.jsonl"
    assert _error([str(missing)], capsys) == f"{missing}: no such file"
    csv = tmp_path / "x.csv"
    csv.write_text("a,b\n")
    assert _error([str(csv)], capsys).startswith(f"{csv}: not a rows file (supported: ")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert _error([str(empty)], capsys) == f"{empty}: holds no rows"
    other = tmp_path / "other.jsonl"
    other.write_text('{"a": 1}\n[1, 2]\nnot json\n')
    assert _error([str(other)], capsys) == (
        f"{other}: not an output file of a run (no line is a row with an id and a status; "
        "3 lines read)")
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(synthetic_rows(1)[0]) + "\n")
    assert _error([str(good), "--examples", "-1"], capsys) == "--examples: must be at least 0, got -1"
    assert _error([str(good), "--workflow", str(tmp_path / "no.yaml")], capsys)
    # the page never replaces the rows it reports on
    before = good.read_bytes()
    assert _error([str(good), "--html", str(tmp_path / "." / "good.jsonl")], capsys) == (
        f"--html {tmp_path / '.' / 'good.jsonl'}: is the rows file itself")
    assert good.read_bytes() == before
