"""The sink's files: torn-line repair, dedup ids, zstd frames, parquet, atomic replacement,
one writer per output, formats by name."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import zstandard

from matrix_p2p import envelope
from matrix_p2p.envelope import Turn, Usage
from matrix_p2p.errors import ConfigError
from matrix_p2p.runtime import files
from matrix_p2p.runtime.files import (
    OutputLock,
    RowWriter,
    load_written_ids,
    out_format,
    replace_file,
    write_parquet,
)
from matrix_p2p.runtime.rowformat import to_row


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


def test_two_writers_replacing_one_file_never_share_a_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: a fixed temp name: a second writer (another store's sink rewriting its sidecar)
    truncated and renamed away the first one's temp file, which then died renaming it."""
    out = tmp_path / "o.jsonl"
    real_fsync = os.fsync
    nested: list[int] = []

    def fsync_then_another_writer(fd: int) -> None:
        real_fsync(fd)
        if not nested:  # the first writer has written its temp file: the second comes now
            nested.append(fd)
            replace_file(out, [b'{"id": "second"}\n'], "jsonl")

    monkeypatch.setattr(files.os, "fsync", fsync_then_another_writer)
    replace_file(out, [b'{"id": "first"}\n'], "jsonl")
    assert nested, "the second writer never ran"
    assert out.read_bytes() == b'{"id": "first"}\n'  # the last rename wins, whole
    assert [p.name for p in tmp_path.iterdir()] == ["o.jsonl"]


def test_a_failed_replacement_leaves_the_file_and_no_temp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "o.jsonl"
    out.write_bytes(b'{"id": "old"}\n')

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        replace_file(out, [b'{"id": "new"}\n'], "jsonl")
    assert out.read_bytes() == b'{"id": "old"}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["o.jsonl"]


def test_a_failed_parquet_write_leaves_no_temp(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "o.parquet.mx.jsonl"
    src.write_text('{"id": "a"}\n')

    def half_written(table: Any, where: Any, **kw: Any) -> None:
        if isinstance(where, str | Path):
            with open(where, "wb") as fh:
                fh.write(b"PAR1")
        else:
            where.write(b"PAR1")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", half_written)
    with pytest.raises(OSError, match="No space left"):
        write_parquet(src, tmp_path / "o.parquet")
    assert [p.name for p in tmp_path.iterdir()] == [src.name]


def test_one_output_lock_at_a_time(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "o.parquet"
    first = OutputLock(out, "parquet")
    first.acquire()
    first.acquire()  # held already: nothing
    assert (tmp_path / "sub" / "o.parquet.mx.lock").read_text() == str(os.getpid())
    with pytest.raises(ConfigError) as err:
        OutputLock(out, "parquet").acquire()
    assert str(err.value) == (f"--out {out}: is being written by another sink (pid "
                              f"{os.getpid()}); stop it first or write to another file")
    first.release()
    with OutputLock(out, "parquet") as again:
        assert again.held
    assert not again.held


@pytest.mark.parametrize(("name", "said"), [
    ("x.csv", "unsupported output format '.csv'"),
    ("x.json", "unsupported output format '.json'"),
    ("x.csv.zst", "unsupported output format '.csv.zst'"),
    ("x", "no extension names its format"),
])
def test_an_output_of_another_format_is_one_line(name: str, said: str) -> None:
    """Why: `--out x.csv`, `x.json` or no extension silently wrote JSON lines."""
    with pytest.raises(ConfigError) as err:
        out_format(Path(name))
    assert str(err.value) == f"--out {name}: {said} (supported: .jsonl, .jsonl.zst, .parquet)"
