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


CSV = (
    'id,question,n\r\n'
    'q1,"What is 2+2?",4\r\n'
    '\r\n'
    'q2,"a cell over\r\ntwo lines, with a comma",5\r\n'
    'q3,too,many,cells\r\n'
    'q4,"",6\r\n'
)


def test_csv_rows_are_dicts_of_strings_numbered_by_their_line(tmp_path: Path) -> None:
    """Why: a .csv source was read as JSON lines: every line failed as "not valid JSON"."""
    spec = _spec(tmp_path)
    (tmp_path / "data" / "in.csv").write_bytes(b"\xef\xbb\xbf" + CSV.encode())  # a BOM, as Excel
    rows = list(iter_rows(spec))
    path = tmp_path / "data" / "in.csv"
    assert [(r.key, r.index, r.row_index, r.source) for r in rows] == [
        ("q1", 2, 0, "data/in.csv"), ("q2", 4, 1, "data/in.csv"), ("in-6", 6, 2, "data/in.csv"),
        ("q4", 7, 3, "data/in.csv")]
    assert rows[0].data == {"id": "q1", "question": "What is 2+2?", "n": "4"}
    assert rows[1].data == {"id": "q2", "question": "a cell over\r\ntwo lines, with a comma",
                            "n": "5"}
    assert rows[2].data is None and rows[2].error == (
        f"{path}:6: 4 cells, the header row has 3 columns")
    assert rows[3].data == {"id": "q4", "question": "", "n": "6"} and rows[3].error is None
    assert all(r.error is None for r in rows if r.key != "in-6")


def test_tsv_rows_and_keys_without_an_id_field(tmp_path: Path) -> None:
    spec = _spec(tmp_path, WF.replace(", id_field: id", ""))
    (tmp_path / "data" / "in.tsv").write_text("text\tlabel\na, b\tx\nc\ty\n")
    rows = list(iter_rows(spec))
    assert [(r.key, r.index, r.row_index, r.data) for r in rows] == [
        ("in-2", 2, 0, {"text": "a, b", "label": "x"}), ("in-3", 3, 1, {"text": "c", "label": "y"})]


@pytest.mark.parametrize(("text", "message"), [
    ("question,n\nq,1\n", "{path}:1: no 'id' column in the header row (source.id_field); its "
                          "columns: question, n"),
    ("id,n,n\nq,1,2\n", "{path}:1: the header row names 'n' twice"),
    ("id,,n\nq,1,2\n", "{path}:1: the header row has an unnamed column"),
    ("\nq,1\n", "{path}:1: not a header row (CSV and TSV sources start with one naming the "
                "columns)"),
])
def test_a_csv_header_that_cannot_name_the_rows_is_one_line(tmp_path: Path, text: str,
                                                            message: str) -> None:
    spec = _spec(tmp_path)
    path = tmp_path / "data" / "in.csv"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        list(iter_rows(spec))
    assert str(err.value) == message.format(path=path)


def test_an_empty_csv_has_no_rows(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    (tmp_path / "data" / "in.csv").write_text("")
    (tmp_path / "data" / "only_header.csv").write_text("id,n\n")
    assert list(iter_rows(spec)) == []


SUPPORTED = "supported: .jsonl, .jsonl.zst, .parquet, .csv, .tsv"


@pytest.mark.parametrize(("name", "message"), [
    ("z.txt", "unsupported source format '.txt' (" + SUPPORTED + ")"),
    ("z", "no extension names its format (" + SUPPORTED + ")"),
    ("z.json", "unsupported source format '.json' (" + SUPPORTED + "); a JSON array of "
               "objects: write one object per line as .jsonl (jq -c '.[]' in.json > in.jsonl)"),
    ("z.csv.zst", "unsupported source format '.zst' (" + SUPPORTED + ")"),
])
def test_a_source_of_another_format_is_one_line_before_any_row(tmp_path: Path, name: str,
                                                              message: str) -> None:
    """Why: any other extension was read as JSON lines, each line a failed task."""
    from matrix_p2p.runtime.rows import check_source

    spec = _spec(tmp_path)
    (tmp_path / "data" / "a.jsonl").write_bytes(_lines([{"id": "a1"}]))  # sorted first
    (tmp_path / "data" / name).write_text('{"id": "z1"}\n')
    expected = f"source {tmp_path / 'data' / name}: {message}"
    with pytest.raises(ConfigError) as err:
        next(iter_rows(spec))  # not after a.jsonl's rows were submitted
    assert str(err.value) == expected
    with pytest.raises(ConfigError) as err2:
        check_source(with_source(spec, str(tmp_path / "data" / name)))
    assert str(err2.value) == expected
