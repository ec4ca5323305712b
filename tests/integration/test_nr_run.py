"""`run natural_reasoning` as a user runs it: another source (--source), kept rows only
(--kept-only), the filter counts in the summary, every document once, and a re-run
that resumes instead of redoing."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import zstandard

from tests.procs import mx

CORPUS = Path(__file__).resolve().parents[2] / "workflows" / "data" / "nr_corpus.jsonl.zst"
DOCS = 120


def _subset(path: Path, n: int) -> list[dict[str, object]]:
    with CORPUS.open("rb") as raw:
        text = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw), "utf-8")
        rows = [json.loads(next(text)) for _ in range(n)]
    path.write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps(r) + "\n" for r in rows).encode()))
    return rows


def test_run_natural_reasoning_from_another_source_kept_only(tmp_path: Path) -> None:
    docs = _subset(tmp_path / "mine.jsonl.zst", DOCS)
    out = tmp_path / "questions.jsonl"
    args = ("run", "natural_reasoning", "--source", "mine.jsonl.zst", "--kept-only",
            "--out", str(out), "--store", str(tmp_path / "store"), "--no-progress")
    r = mx(*args, cwd=tmp_path, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = r.stderr.strip().splitlines()[-1]
    m = re.search(r"kept (\d+), filtered (\d+) \((.+)\), fanned out (\d+), failed (\d+)$", summary)
    assert m, summary
    kept, filtered, by_reason, fanned, failed = m.groups()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # only the questions: each a child of a kept document, two per document
    assert len(rows) == int(kept) > 0 and int(failed) == 0
    assert all(r["status"] == "done" and r["result"]["kept"] is True for r in rows)
    assert all(r["result"]["question"] and r["result"]["reference_answer"] for r in rows)
    assert sorted(r["result"]["question_index"] for r in rows) == sorted([0, 1] * int(fanned))
    assert {r["parent"] for r in rows} == {r["id"].rsplit("/", 1)[0] for r in rows}
    assert {r["input"]["id"] for r in rows} <= {d["id"] for d in docs}
    # every document once: kept (fanned out) or filtered, named by its reason
    assert int(fanned) + int(filtered) == DOCS
    assert sum(int(n) for n in re.findall(r" (\d+)(?:,|$)", by_reason)) == int(filtered)
    skipped = [json.loads(line) for line in
               (tmp_path / "questions.jsonl.skipped").read_text().splitlines()]
    assert len(skipped) == len({s["id"] for s in skipped}) == DOCS
    # summary.json: the rows are the file's lines, and the workflow's own figures read the
    # documents against their questions
    summary_json = json.loads((tmp_path / "questions.jsonl.summary.json").read_text())
    assert summary_json["rows"] == len(rows) and summary_json["filters"]["kept"] == int(kept)
    assert {f["label"]: f["value"] for f in summary_json["figures"]} == {
        "kept documents": int(fanned), "questions": len(rows), "questions per kept document": 2.0}
    # the same command again: nothing new to do, nothing written twice
    again = mx(*args, cwd=tmp_path, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert out.read_text().count("\n") == len(rows)
