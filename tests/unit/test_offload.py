"""offload.py on the in-memory bus: references in, values out, each object put once,
and every object a task put deleted at its end."""

from __future__ import annotations

import msgspec
import pytest

from matrix_p2p import envelope
from matrix_p2p.bus import MemoryBus
from matrix_p2p.envelope import new_task
from matrix_p2p.errors import ConfigError
from matrix_p2p.runtime.offload import MissingObject, Offloader, is_ref, refs
from matrix_p2p.workflow import spec as specmod

WF = """
name: offl
limits: {offload_bytes: 1024}
roles:
  a: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
routing: {type: cycle, roles: [a], max_turns: 1}
"""


def _setup(text: str = WF) -> tuple[MemoryBus, Offloader, dict[str, bytes]]:
    bus = MemoryBus()
    spec = specmod.parse(text, path="off.yaml")
    return bus, Offloader(bus, spec), bus.objects.setdefault("MX_OFFL_OBJECTS", {})


async def test_big_values_travel_by_reference_and_come_back_equal() -> None:
    _bus, off, store = _setup()
    big = "x" * 5000
    task = new_task(task_id="t1", workflow="offl", role="a",
                    row={"text": big, "url": "u", "n": 7}, now=0.0)
    task.state["notes"] = ["y" * 2000]
    put = await off.store(task)
    assert len(put) == 2 and set(store) == set(put) == set(task.objects)
    assert all(name.startswith("t1/") for name in put)
    assert is_ref(task.row["text"]) and task.row["url"] == "u" and task.row["n"] == 7
    assert sorted((s, k) for s, k, _ in refs(task)) == [("row", "text"), ("state", "notes")]
    wire = envelope.decode(envelope.encode(task))  # what the next hop receives
    assert len(envelope.encode(wire)) < 1000
    await off.load(wire)
    assert wire.row["text"] == big and wire.state["notes"] == ["y" * 2000]


async def test_an_untouched_value_keeps_its_reference_and_a_redelivery_puts_nothing_new() -> None:
    _bus, off, store = _setup()
    task = new_task(task_id="t1", workflow="offl", role="a", row={"text": "z" * 4000}, now=0.0)
    await off.store(task)
    first = dict(task.row)
    data = envelope.encode(task)
    for _ in range(2):  # the same hop delivered twice: same bytes, same names, no new object
        hop = envelope.decode(data)
        resolved = await off.load(hop)
        hop.state["answer"] = "w" * 3000  # deterministic agent output
        assert await off.store(hop, resolved) in ([], [hop.objects[-1]])
        assert hop.row == first  # the reference, not a new put
    assert len(store) == 2


async def test_a_changed_value_gets_a_new_object_and_the_end_deletes_them_all() -> None:
    _bus, off, store = _setup()
    task = new_task(task_id="t1", workflow="offl", role="a", row={"text": "a" * 4000}, now=0.0)
    await off.store(task)
    resolved = await off.load(task)
    task.row["text"] = "b" * 4000
    await off.store(task, resolved)
    assert len(task.objects) == 2 and len(store) == 2
    await off.load(task)
    assert task.row["text"] == "b" * 4000
    await off.delete_all(task)
    await off.delete_all(task)  # again (a redelivered result): nothing to do, no error
    assert store == {}


async def test_a_missing_object_is_named() -> None:
    bus, off, store = _setup()
    task = new_task(task_id="t1", workflow="offl", role="a", row={"text": "a" * 4000}, now=0.0)
    await off.store(task)
    store.clear()
    cached = msgspec.structs.replace(task, row=dict(task.row))
    await off.load(cached)  # this process still holds the bytes it wrote: safe, they never change
    assert cached.row["text"] == "a" * 4000
    off = Offloader(bus, specmod.parse(WF, path="off.yaml"))  # another process
    held = msgspec.structs.replace(task, row=dict(task.row))
    await off.load(held, missing_ok=True)
    assert is_ref(held.row["text"])
    with pytest.raises(MissingObject, match=r"^task t1: row.text was offloaded as 't1/[0-9a-f]{32}', "
                                            r"which is no longer in the object store$"):
        await off.load(task)


async def test_offload_off_touches_nothing() -> None:
    _bus, off, store = _setup(WF.replace("offload_bytes: 1024", "offload_bytes: null"))
    task = new_task(task_id="t1", workflow="offl", role="a", row={"text": "a" * 400_000}, now=0.0)
    assert await off.store(task) == [] and store == {} and task.row["text"] == "a" * 400_000


def test_a_tiny_threshold_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^off.yaml: limits.offload_bytes: must be at least 1024"):
        specmod.parse(WF.replace("1024", "10"), path="off.yaml")
