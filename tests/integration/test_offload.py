"""Large documents through the natural_reasoning workflow on a broker with NATS's
default 1 MB max_payload: 2 MB and 16 MB texts travel in the object store, the
output holds them byte for byte, and the store is empty afterwards."""

from __future__ import annotations

import importlib.util
import random
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.bus import Bus, ConnectOptions, connect
from matrix_p2p.bus.objects import stream_of
from matrix_p2p.resources.llm import open_llms
from matrix_p2p.runtime.topology import Names
from matrix_p2p.sim.config import SimConfig
from matrix_p2p.sim.server import start_fleet
from tests.conftest import make_spec
from tests.integration.helpers import read_rows, run_until

ROOT = Path(__file__).resolve().parents[2]
MB = 1024 * 1024


@pytest.fixture(scope="module")
def small_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A broker with NATS's default max_payload (1 MB): every big document must offload."""
    server = EmbeddedNats(store_dir=tmp_path_factory.mktemp("nats1mb"), sync="interval",
                          max_payload=MB)
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
async def small_bus(small_broker: EmbeddedNats) -> AsyncIterator[Bus]:
    b = await connect(ConnectOptions(url=small_broker.url, name="offload"))
    yield b
    await b.close()


def big_document(size: int, seed: int) -> str:
    """Varied English worked examples from the corpus generator, up to ``size`` bytes."""
    spec = importlib.util.spec_from_file_location(
        "make_nr_corpus", ROOT / "workflows" / "data" / "make_nr_corpus.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_nr_corpus", mod)
    spec.loader.exec_module(mod)
    rng = random.Random(seed)
    parts: list[str] = []
    total = 0
    while total < size:
        text, _topic = mod.reasoning_doc(rng, "notes.example.com")
        parts.append(text)
        total += len(text.encode()) + 2
    return "\n\n".join(parts)[:size]


def workflow_copy() -> str:
    """natural_reasoning with the quality limits a 16 MB document needs (its length and
    the repetition of many worked examples in one page), and a short ack_wait."""
    doc: dict[str, Any] = yaml.safe_load(
        (ROOT / "workflows" / "natural_reasoning.yaml").read_text())
    doc.pop("name")
    doc["source"] = {"path": "rows.jsonl", "id_field": "id"}
    doc["roles"]["quality"]["options"].update(
        max_words=10_000_000, max_dup_lines=1.0, max_dup_chars=1.0,
        max_top_ngram=[1.0, 1.0, 1.0], max_dup_ngram=[1.0] * 6, max_boilerplate_frac=1.0)
    doc["roles"]["langid"]["options"]["accuracy"] = "low"
    doc["limits"].update(ack_wait_s=10, retry_backoff_s=0.2)
    return yaml.safe_dump(doc)


@pytest.mark.parametrize("size_mb", [
    2,
    # the quality heuristics take ~10 s of CPU on 16 MB (the agent, not the offload)
    pytest.param(16, marks=pytest.mark.slow),
])
async def test_big_documents_go_through_and_leave_no_object(
        small_bus: Bus, tmp_path: Path, size_mb: int) -> None:
    docs = [{"id": "big", "text": big_document(size_mb * MB, size_mb), "url": "u2"},
            {"id": "small", "text": big_document(4000, 3), "url": "u0"}]
    spec = make_spec(tmp_path, workflow_copy(), docs)
    assert small_bus.max_payload == MB
    sims = await start_fleet(SimConfig(seed=1), replicas=1)
    try:
        async with open_llms(spec, list(spec.roles), [s.url for s in sims]) as llms:
            sink, stats, _ = await run_until(small_bus, spec, tmp_path / "out.jsonl", expect=2,
                                             deadline_s=120, llm_for=llms.by_role, fan_out=True)
    finally:
        for s in sims:
            await s.stop()
    rows = {r["id"]: r for r in read_rows(tmp_path / "out.jsonl")}
    assert {i for i in rows if "/" not in i} == {"big-t0", "small-t0"}
    for d in docs:
        row = rows[f"{d['id']}-t0"]
        assert row["status"] == "done", row["error"]
        assert row["input"]["text"] == d["text"]  # byte for byte, offloaded or not
        assert row["input"]["url"] == d["url"]
        # past every CPU filter into the LLM roles
        roles = [t["role"] for t in row["dialogue"]]
        assert roles[:4] == ["langid", "quality", "dedup", "llm_filter"], (roles, row["result"])
        # a kept document fans out (two questions), each child with its own copy of the text
        kids = [r for r in rows.values() if r.get("parent") == row["id"]]
        assert len(kids) == row.get("children", 0)
        assert all(k["input"]["text"] == d["text"] and k["result"]["question"] for k in kids)
    assert rows["big-t0"].get("children") == 2  # offload and fan-out together
    assert stats.failed == 0 and stats.dead_lettered == 0
    # nothing left in the object store: no chunk, no meta record, no tombstone
    assert await small_bus.stream_msgs(stream_of(Names.of(spec).objects_bucket)) == 0
    assert sink.finished(2) and sink.count == len(rows)
