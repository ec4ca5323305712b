"""Rows in memory become a content-addressed JSONL file the run reads (embed/sources.py)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from matrix_p2p.embed.sources import apply, write_rows
from matrix_p2p.runtime.rows import iter_rows
from matrix_p2p.workflow.spec import SourceSpec, parse

SPEC = parse("""
name: src
source: {path: own.jsonl, id_field: qid}
roles:
  a: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
routing: {type: cycle, roles: [a]}
""", path="wf.yaml")
ROWS = [{"qid": "a", "q": "one"}, {"qid": "b", "q": "two", "n": 2}]


def test_the_same_rows_give_the_same_file_and_other_rows_another(tmp_path: Path) -> None:
    first = write_rows(ROWS, tmp_path)
    again = write_rows(iter(list(ROWS)), tmp_path)  # a generator: read once, same bytes
    other = write_rows([*ROWS, {"qid": "c"}], tmp_path)
    assert first == again != other
    assert first.name.startswith("rows-") and first.suffix == ".jsonl"
    assert [json.loads(line) for line in first.read_text().splitlines()] == ROWS
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({first.name, other.name})


def test_the_run_reads_the_file_with_ids_from_id_field_or_position(tmp_path: Path) -> None:
    rows = list(iter_rows(apply(SPEC, ROWS, tmp_path)))
    assert [(r.key, r.row_index, r.data) for r in rows] == [("a", 0, ROWS[0]), ("b", 1, ROWS[1])]
    by_position = apply(msgspec.structs.replace(SPEC, source=SourceSpec()), ROWS, tmp_path)
    path = write_rows(ROWS, tmp_path / "rows")
    assert [r.key for r in iter_rows(by_position)] == [f"{path.stem}-1", f"{path.stem}-2"]


class FakeFrame:
    """What a pandas DataFrame offers here; iterating it yields column names."""

    columns = ("qid", "when")

    def __iter__(self) -> Any:
        return iter(self.columns)

    def to_dict(self, orient: str) -> list[dict[str, Any]]:
        assert orient == "records"
        return [{"qid": "x", "when": datetime.date(2024, 5, 1)}, {"qid": "y", "when": None}]


class FakeScalar:
    """A numpy scalar's shape: ``item()`` gives the Python value."""

    shape = ()

    def item(self) -> int:
        return 7


def test_a_data_frame_is_read_by_records_not_by_columns(tmp_path: Path) -> None:
    path = write_rows(FakeFrame(), tmp_path)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"qid": "x", "when": "2024-05-01"}, {"qid": "y", "when": None}]
    assert json.loads(write_rows([{"n": FakeScalar()}], tmp_path).read_text()) == {"n": 7}


def test_pandas_and_datasets_when_installed(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"qid": ["p", "q"], "n": [1, 2]})
    assert [json.loads(x) for x in write_rows(frame, tmp_path).read_text().splitlines()] == [
        {"qid": "p", "n": 1}, {"qid": "q", "n": 2}]
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"qid": "p", "n": 1}, {"qid": "q", "n": 2}])
    assert write_rows(ds, tmp_path).read_text() == write_rows(frame, tmp_path).read_text()


@pytest.mark.parametrize(("source", "message"), [
    ([{"a": 1}, "b"], r"^source: row 1: expected a dict, got str$"),
    ([{"a": 1}, {"b": object()}], r"^source: row 1: a object is not a JSON value$"),
    ({"train": []}, r"^source: expected rows \(dicts\), got a mapping; a DatasetDict\?"),
    (b"a.jsonl", r"^source: expected a path, a glob, 'hf:NAME' or rows \(dicts\), got bytes$"),
])
def test_what_is_not_rows_is_named_and_leaves_no_file(
    tmp_path: Path, source: object, message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        write_rows(source, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_path_glob_or_hf_name_is_the_cli_source(tmp_path: Path) -> None:
    assert apply(SPEC, None, tmp_path) is SPEC
    spec = apply(SPEC, tmp_path / "in" / "*.jsonl", tmp_path)
    assert spec.source.path == str(tmp_path / "in" / "*.jsonl") and spec.source.id_field == "qid"
    hf = apply(SPEC, "hf:org/data:test", tmp_path).source.hf
    assert hf is not None and (hf.dataset, hf.split) == ("org/data", "test")
    assert not (tmp_path / "rows").exists()
