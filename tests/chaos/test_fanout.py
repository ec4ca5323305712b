"""kill -9 of workers while they fan out: every parent and every child exactly once."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from matrix_p2p.broker import EmbeddedNats
from tests.chaos.harness import (
    Proc,
    chaos_rng,
    check_exactly_once,
    count_lines,
    expected_ids,
    mx,
    processes,
    read_rows,
    status_json,
    wait_for,
    write_workflow,
)

pytestmark = pytest.mark.chaos

FAN = """
roles:
  split:  {agent: "tests.chaos.agents:Splitter", llm: null, concurrency: 30,
           options: {delay_s: 0.5, children: CHILDREN}}
  answer: {agent: "tests.chaos.agents:Sleeper", llm: null, concurrency: 50, options: {delay_s: 0.05}}
routing: {type: cycle, roles: [split, answer], max_turns: 2}
limits: {ack_wait_s: 2, retry_backoff_s: 0.1, max_deliveries: 10}
"""


def test_worker_killed_during_fan_out(tmp_path: Path) -> None:
    rng = chaos_rng()
    n, k = 150, 8
    wf = write_workflow(tmp_path, f"fan{int(time.time() * 1000) % 100000}",
                        FAN.replace("CHILDREN", str(k)), [{"n": i} for i in range(n)])
    parents = expected_ids(wf)
    children = {f"{p}/{i}" for p in parents for i in range(k)}
    total = n + n * k
    out = tmp_path / "out.jsonl"
    server = EmbeddedNats(store_dir=tmp_path / "nats")  # file store, fsync always
    server.start()
    try:
        assert mx("submit", str(wf), "--nats", server.url).returncode == 0
        with processes() as ps:
            fleet = [Proc(["worker", str(wf), "--role", "all", "--nats", server.url,
                           "--drain-timeout", "5"], tmp_path / f"w{i}.log") for i in range(2)]
            ps.extend(fleet)
            sink = Proc(["sink", str(wf), "--nats", server.url, "--out", str(out),
                         "--expect", str(total), "--timeout", "180"], tmp_path / "sink.log")
            ps.append(sink)
            wait_for(lambda: count_lines(out) >= 20, 60, "the first results")
            def parents_written() -> int:
                text = out.read_text() if out.exists() else ""
                return sum(1 for line in text.splitlines() if '"parent"' not in line)

            kills = 0
            while parents_written() < n * 0.8 and kills < 8:  # while parents still split
                time.sleep(rng.uniform(0.2, 0.6))  # chaos pacing, not synchronisation
                rng.choice(fleet).restart()
                kills += 1
            assert sink.wait(timeout=180) == 0, sink.text()[-3000:]
            for w in fleet:
                assert w.stop() == 0, w.text()[-3000:]
            st = status_json(wf, server.url)
            statuses = check_exactly_once(out, parents, st, extra=children)
            split_redelivered = sum(1 for w in fleet for e in w.events("worker.redelivered")
                                    if e.get("role") == "split")
    finally:
        server.cleanup()
    assert statuses == Counter({"done": total})
    assert kills >= 3
    assert split_redelivered > 0, "no kill landed in a fan-out: make the run longer"
    rows = read_rows(out)
    by_parent = Counter(r["parent"] for r in rows if "parent" in r)
    assert by_parent == Counter({p: k for p in parents})  # each parent's children, once each
    assert all(r["children"] == k for r in rows if r["id"] in parents)
    assert {r["result"]["part"] for r in rows if "parent" in r} == set(range(k))
