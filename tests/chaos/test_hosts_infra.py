"""The shipped cluster config (infra/nats/cluster.conf) forms a working 3-node cluster
on three hosts that know each other only by the names it uses (nats-1..3), and a fleet
given every node's name, as infra/systemd/worker.env.example gives it, runs R3 tasks
exactly once."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from matrix_p2p.broker import find_nats_server
from tests.chaos.harness import ROOT, check_exactly_once, child_env, expected_ids, write_workflow
from tests.chaos.test_hosts_cluster import SLEEPY
from tests.hosts.cluster import MxProc
from tests.hosts.fixture import make_net  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.chaos]


def test_the_shipped_cluster_config_runs_a_fleet_on_three_hosts(make_net, tmp_path: Path) -> None:  # noqa: F811
    net = make_net(4)
    net.name_hosts({"nats-1": 0, "nats-2": 1, "nats-3": 2})
    shipped = (ROOT / "infra/nats/cluster.conf").read_text()
    assert "store_dir: /var/lib/nats/jetstream" in shipped
    nodes = []
    for i in range(3):
        # the shipped file, its store moved into the test's directory (nothing else changed)
        conf = tmp_path / f"nats-{i + 1}.conf"
        conf.write_text(shipped.replace("/var/lib/nats/jetstream", str(tmp_path / f"js{i + 1}")))
        env = dict(os.environ, NATS_SERVER_NAME=f"nats-{i + 1}")
        nodes.append(net[i].popen([find_nats_server(), "-c", str(conf)], tmp_path / f"n{i + 1}.log",
                                  env=env))
    urls = "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222"  # as worker.env.example
    n = 12
    wf = write_workflow(tmp_path, "infra", SLEEPY, [{"n": i} for i in range(n)])
    env = child_env(MX_NATS_URL=urls)
    cmd = [sys.executable, "-m", "matrix_p2p"]
    for _ in range(60):  # the cluster elects its meta leader first
        sub = net[3].run([*cmd, "submit", str(wf), "--stream-replicas", "3"], env=env, cwd=ROOT)
        if sub.returncode == 0:
            break
    assert sub.returncode == 0, sub.stderr
    out = tmp_path / "out.jsonl"
    w = MxProc(net[3], ["worker", str(wf), "--role", "all", "--nats", urls], tmp_path / "w.log")
    sink = MxProc(net[3], ["sink", str(wf), "--nats", urls, "--out", str(out), "--expect", str(n),
                           "--timeout", "180"], tmp_path / "sink.log")
    assert sink.wait(timeout=200) == 0, sink.text()[-3000:]
    assert w.stop() == 0, w.text()[-3000:]
    st = net[3].run([*cmd, "status", str(wf), "--nats", urls, "--json", "--sample", "0"],
                    env=env, cwd=ROOT)
    assert st.returncode == 0, st.stderr
    check_exactly_once(out, expected_ids(wf), json.loads(st.stdout))
    # R3: every node stores the task stream
    for i in range(3):
        assert list((tmp_path / f"js{i + 1}").glob("**/streams/MX_INFRA_TASKS")), i
