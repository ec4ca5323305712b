"""Input readers: JSONL, JSONL.zst, Parquet, globs, and the ``--source`` override."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec
import pytest
import zstandard

from matrix_p2p.errors import ConfigError
from matrix_p2p.runtime.rows import iter_rows, with_source
from matrix_p2p.workflow import spec as specmod

WF = """
name: rowsdemo
source: {path: data/*, id_field: id}
roles:
  a: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
routing: {type: cycle, roles: [a], max_turns: 1}
"""


def _spec(tmp_path: Path, text: str = WF) -> specmod.WorkflowSpec:
    (tmp_path / "data").mkdir(exist_ok=True)
    return specmod.parse(text, path=str(tmp_path / "wf.yaml"))


def _lines(rows: list[dict[str, object]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def test_jsonl_zst_and_parquet_in_one_glob_in_name_order(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    spec = _spec(tmp_path)
    (tmp_path / "data" / "a.jsonl").write_bytes(_lines([{"id": "a1", "text": "x"}]))
    (tmp_path / "data" / "b.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(_lines([{"id": "b1"}, {"id": "b2"}]) + b"{bad\n"))
    pq.write_table(pa.Table.from_pylist([{"id": f"c{i}", "n": i} for i in range(2500)]),
                   tmp_path / "data" / "c.parquet")
    rows = list(iter_rows(spec))
    assert [r.key for r in rows[:4]] == ["a1", "b1", "b2", "b-3"]
    assert rows[3].error is not None and rows[3].error.endswith("b.jsonl.zst:3: not valid JSON: "
                                                                "Expecting property name enclosed "
                                                                "in double quotes")
    assert len(rows) == 4 + 2500
    assert rows[-1].data == {"id": "c2499", "n": 2499} and rows[-1].index == 2500


def test_parquet_without_pyarrow_is_a_one_line_error(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(tmp_path)
    (tmp_path / "data" / "c.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ConfigError, match=r"wf.yaml: source c.parquet: reading Parquet needs "
                                          r"pyarrow \(pip install 'matrix_p2p\[parquet\]'\)$"):
        list(iter_rows(spec))


def test_source_override_is_relative_to_the_current_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "in.jsonl").write_bytes(_lines([{"id": "z"}]))
    monkeypatch.chdir(elsewhere)
    over = with_source(spec, "*.jsonl")
    assert [r.key for r in iter_rows(over)] == ["z"]
    assert with_source(spec, None) is spec
    hf = with_source(spec, "hf:org/name:test").source
    assert hf.hf is not None and (hf.hf.dataset, hf.hf.split, hf.id_field) == (
        "org/name", "test", "id")
    with pytest.raises(ConfigError, match=r"^--source 'hf:': no dataset name after 'hf:'$"):
        with_source(spec, "hf:")
    with pytest.raises(ConfigError, match=r"source.path: no file matches '.*nothing\*'$"):
        list(iter_rows(with_source(spec, "nothing*")))


def test_rows_are_read_lazily(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    # a line that is not valid JSON far down the file: the first rows come without reading it
    (tmp_path / "data" / "big.jsonl").write_bytes(
        _lines([{"id": str(i)} for i in range(50_000)]) + b"not json\n")
    it = iter_rows(spec)
    assert next(it).key == "0"
    assert msgspec.structs.asdict(next(it))["key"] == "1"
