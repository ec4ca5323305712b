from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from matrix_p2p import envelope
from matrix_p2p.envelope import EnvelopeError, Task, Turn, Usage


def make() -> Task:
    t = envelope.new_task(task_id="q1-t0", workflow="coral", role="teacher",
                          row={"question": "2+2?"}, now=1.0)
    t.turns.append(Turn(role="teacher", content="four", usage=Usage(prompt_tokens=3,
                                                                    completion_tokens=5)))
    t.turns.append(Turn(role="student", content="4", usage=Usage(prompt_tokens=7,
                                                                 completion_tokens=1)))
    return t


def test_roundtrip_keeps_every_field() -> None:
    t = make()
    assert envelope.decode(envelope.encode(t)) == t


def test_usage_sums_by_role_and_total() -> None:
    t = make()
    assert t.usage() == Usage(prompt_tokens=10, completion_tokens=6)
    assert t.usage_by_role()["student"] == Usage(prompt_tokens=7, completion_tokens=1)


def test_garbage_bytes_name_the_problem() -> None:
    with pytest.raises(EnvelopeError, match=r"undecodable envelope \(5 bytes\)"):
        envelope.decode(b"\xc1\xc1\xc1\xc1\xc1")


def test_wrong_shape_names_the_field() -> None:
    data = msgspec.msgpack.encode({"id": "x", "workflow": "w", "role": "r", "hop": "three"})
    with pytest.raises(EnvelopeError, match=r"Expected `int`, got `str` - at `\$.hop`"):
        envelope.decode(data)


def test_missing_required_field_is_named() -> None:
    data = msgspec.msgpack.encode({"workflow": "w", "role": "r"})
    with pytest.raises(EnvelopeError, match=r"missing required field `id`"):
        envelope.decode(data)


def test_empty_id_is_rejected() -> None:
    data = msgspec.msgpack.encode({"id": "", "workflow": "w", "role": "r"})
    with pytest.raises(EnvelopeError, match=r"`\$.id` is empty"):
        envelope.decode(data)


def test_unknown_fields_are_ignored_for_rolling_upgrades() -> None:
    raw = msgspec.msgpack.decode(envelope.encode(make()))
    raw["field_from_a_newer_version"] = {"x": 1}
    assert envelope.decode(msgspec.msgpack.encode(raw)).id == "q1-t0"


def test_old_envelope_without_new_fields_decodes_with_defaults() -> None:
    data = msgspec.msgpack.encode({"id": "a", "workflow": "w", "role": "r"})
    t = envelope.decode(data)
    assert (t.hop, t.status, t.turns, t.v) == (0, "running", [], envelope.SCHEMA_VERSION)


@given(st.binary(max_size=300))
def test_decoder_never_raises_anything_but_envelope_error(data: bytes) -> None:
    try:
        envelope.decode(data)
    except EnvelopeError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=10,
)


@given(state=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
       hop=st.integers(0, 10_000), content=st.text(max_size=100))
def test_roundtrip_arbitrary_state(state: dict[str, object], hop: int, content: str) -> None:
    t = make()
    t.state = state
    t.hop = hop
    t.turns.append(Turn(role="judge", content=content))
    assert envelope.decode(envelope.encode(t)) == t
