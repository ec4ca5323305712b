"""A 3-node JetStream cluster on loopback, R3 streams: one node dies mid-run, workers fail over."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from matrix_p2p.broker import EmbeddedNats, free_port
from tests.chaos.harness import (
    Proc,
    chaos_rng,
    check_exactly_once,
    count_lines,
    expected_ids,
    mx,
    processes,
    status_json,
    wait_for,
    write_workflow,
)
from tests.chaos.test_crashes import SLOW_CYCLE

pytestmark = pytest.mark.chaos


def _cluster(tmp: Path) -> list[EmbeddedNats]:
    cports = [free_port() for _ in range(3)]
    nodes = []
    for i in range(3):
        routes = [f"nats-route://127.0.0.1:{p}" for j, p in enumerate(cports) if j != i]
        nodes.append(EmbeddedNats(store_dir=tmp / f"n{i}", server_name=f"n{i}",
                                  cluster_name="mxchaos", cluster_port=cports[i], routes=routes))
    return nodes


# slow (about 40 s: three brokers); `make test-all` runs it
@pytest.mark.slow
def test_r3_cluster_loses_a_node_mid_run(tmp_path: Path) -> None:
    rng = chaos_rng()
    n = 600
    wf = write_workflow(tmp_path, "clu", SLOW_CYCLE.replace("DELAY", "0.2"),
                        [{"n": i} for i in range(n)])
    out = tmp_path / "out.jsonl"
    nodes = _cluster(tmp_path)
    try:
        for node in nodes:
            node.start()
        urls = ",".join(node.url for node in nodes)
        # the cluster elects its JetStream meta leader after start: retry submit, bounded
        deadline = time.monotonic() + 60
        while True:
            sub = mx("submit", str(wf), "--nats", urls, "--stream-replicas", "3")
            if sub.returncode == 0 or time.monotonic() > deadline:
                break
        assert sub.returncode == 0, sub.stderr
        with processes() as ps:
            fleet = [Proc(["worker", str(wf), "--role", "all", "--nats", urls,
                           "--stream-replicas", "3"], tmp_path / f"w{i}.log") for i in range(3)]
            ps.extend(fleet)
            sink = Proc(["sink", str(wf), "--nats", urls, "--out", str(out), "--expect", str(n),
                         "--timeout", "240"], tmp_path / "sink.log")
            ps.append(sink)
            wait_for(lambda: count_lines(out) >= n // 4, 120, "a quarter of the results")
            # R3: every node holds a replica of the task stream
            for node in nodes:
                assert list(node.store_dir.glob("**/streams/MX_CLU_TASKS")), node.store_dir
            victim = rng.randrange(3)
            nodes[victim].kill()
            assert count_lines(out) < n, "the run finished before the node died"
            assert sink.wait(timeout=240) == 0, sink.text()[-3000:]
            for w in fleet:
                assert w.stop() == 0, w.text()[-3000:]
            alive = ",".join(node.url for i, node in enumerate(nodes) if i != victim)
            st = status_json(wf, alive)
            statuses = check_exactly_once(out, expected_ids(wf), st)
            print("killed node", victim, statuses)
    finally:
        for node in nodes:
            node.cleanup()
