"""Replay ids: ``<id>~r<generation>``, a pure round trip (hypothesis)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from matrix_p2p.runtime import replay as ops
from matrix_p2p.runtime.attempts import kv_key

ids = st.from_regex(r"[A-Za-z0-9_-]{1,40}-t[0-9]{1,3}", fullmatch=True)


@given(ids, st.integers(min_value=1, max_value=10_000))
def test_replay_id_round_trip(task_id: str, generation: int) -> None:
    rid = ops.replay_id(task_id, generation)
    assert ops.split_replay_id(rid) == (task_id, generation)
    assert ops.split_replay_id(task_id) == (task_id, 0)
    # a replay of a replay keeps the original's base id
    assert ops.replay_id(rid, generation + 1) == f"{task_id}~r{generation + 1}"
    # and its key-value key is valid (no "~")
    assert "~" not in kv_key(rid)
