"""The `hf` source, with a stand-in `datasets` module (the real one is an optional extra)."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from matrix_p2p.errors import ConfigError
from matrix_p2p.runtime.source import iter_rows, task_id
from matrix_p2p.workflow import spec as specmod

HF = """
name: hfdemo
source: {hf: {dataset: org/questions, split: test}, id_field: qid}
roles:
  a: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
routing: {type: cycle, roles: [a], max_turns: 1}
"""


def test_hf_rows_stream_with_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def load_dataset(name: str, config: str | None, *, split: str, streaming: bool) -> Any:
        calls.append((name, config, split, streaming))
        return iter([{"qid": "x1", "q": "a?"}, {"qid": "x2", "q": "b?"}])

    monkeypatch.setitem(sys.modules, "datasets",
                        types.SimpleNamespace(load_dataset=load_dataset))
    rows = list(iter_rows(specmod.parse(HF, path="hf.yaml")))
    assert calls == [("org/questions", None, "test", True)]
    assert [(r.source, r.index, r.key, r.data) for r in rows] == [
        ("hf:org/questions/test", 0, "x1", {"qid": "x1", "q": "a?"}),
        ("hf:org/questions/test", 1, "x2", {"qid": "x2", "q": "b?"}),
    ]
    assert task_id(rows[0].key, 0) == "x1-t0"


def test_hf_without_the_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(ConfigError, match=r"^hf.yaml: source.hf needs the 'datasets' package"):
        list(iter_rows(specmod.parse(HF, path="hf.yaml")))


def test_task_ids_are_safe_and_unique() -> None:
    assert task_id("q0001", 2) == "q0001-t2"
    weird = task_id("a b/c.d", 0)
    assert weird.startswith("a_b_c_d-") and weird.endswith("-t0")
    assert task_id("a b", 0) != task_id("a_b", 0)  # sanitising never merges two keys
    assert len(task_id("x" * 500, 0)) < 80
