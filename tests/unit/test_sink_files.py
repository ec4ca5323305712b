"""The sink's files: torn-line repair, dedup ids, zstd frames, parquet."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import zstandard

from matrix_p2p import envelope
from matrix_p2p.envelope import Turn, Usage
from matrix_p2p.runtime.files import RowWriter, load_written_ids, write_parquet
from matrix_p2p.runtime.sink import to_row


def test_torn_last_line_is_cut_and_ids_loaded(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    out.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "c", "trunc')
    assert load_written_ids(out) == {"a", "b"}
    assert out.read_bytes() == b'{"id": "a"}\n{"id": "b"}\n'


def test_missing_file_means_nothing_written(tmp_path: Path) -> None:
    assert load_written_ids(tmp_path / "none.jsonl") == set()


def test_zstd_frames_append_and_reload(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl.zst"
    for batch in (["a", "b"], ["c"]):
        w = RowWriter(out, "jsonl.zst")
        for i in batch:
            w.write(json.dumps({"id": i}).encode() + b"\n")
        w.close()
    assert load_written_ids(out, "jsonl.zst") == {"a", "b", "c"}
    with out.open("rb") as fh:
        text = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True).read()
    assert text.count(b"\n") == 3


def test_row_has_dialogue_usage_and_timings() -> None:
    t = envelope.new_task(task_id="q1-t0", workflow="coral", role="judge", row={"q": 1}, now=10.0)
    t.turns = [Turn(role="teacher", content="A", elapsed_s=1.5, usage=Usage(prompt_tokens=5,
                                                                            completion_tokens=2)),
               Turn(role="judge", content="ok", elapsed_s=0.5, meta={"verdict": "AGREE"})]
    t.status, t.finished_at, t.state = "done", 13.0, {"agreed": True, "answer": "A"}
    row = to_row(t)
    assert row["id"] == "q1-t0" and row["status"] == "done"
    assert row["result"] == {"agreed": True, "answer": "A"}
    assert [d["role"] for d in row["dialogue"]] == ["teacher", "judge"]
    assert row["dialogue"][1]["meta"] == {"verdict": "AGREE"}
    assert row["usage"]["teacher"] == {"prompt_tokens": 5, "completion_tokens": 2}
    assert row["usage"]["total"] == {"prompt_tokens": 5, "completion_tokens": 2}
    assert row["timings"]["elapsed_s"] == 3.0
    assert row["timings"]["by_role"] == {"teacher": 1.5, "judge": 0.5}


def test_parquet_from_jsonl(tmp_path: Path) -> None:
    src = tmp_path / "o.jsonl"
    src.write_text('{"id": "a", "n": 1}\n{"id": "b", "n": 2}\n')
    write_parquet(src, tmp_path / "o.parquet")
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.column("id").to_pylist() == ["a", "b"]


def test_a_replayed_row_counts_only_its_own_usage() -> None:
    t = envelope.new_task(task_id="q1-t0~r1", workflow="w", role="judge", row={}, now=10.0)
    t.turns = [Turn(role="teacher", usage=Usage(prompt_tokens=5, completion_tokens=2)),
               Turn(role="judge", usage=Usage(prompt_tokens=7, completion_tokens=1))]
    t.hop, t.status, t.finished_at = 4, "done", 12.0
    t.state = {"replay": {"generation": 1, "of": "q1-t0", "role": "judge", "from_turn": 1,
                          "from_hop": 3}}
    row = to_row(t)
    assert row["usage"] == {"judge": {"prompt_tokens": 7, "completion_tokens": 1},
                            "total": {"prompt_tokens": 7, "completion_tokens": 1}}
    assert row["hops"] == 1 and len(row["dialogue"]) == 2
