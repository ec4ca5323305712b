"""The command line as a user meets it: --help, one-line errors, a fleet from the CLI alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from matrix_p2p.broker import free_port
from tests.procs import Proc, mx, procs, wait_port

COMMANDS = ["run", "worker", "submit", "sink", "status", "sim-llm", "nats-server", "nats-users", "export",
            "report"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself(command: str) -> None:
    r = mx(command, "--help")
    assert r.returncode == 0, r.stderr
    assert "usage: python -m matrix_p2p " + command in r.stdout
    assert "--log-level" in r.stdout


def test_top_level_help_draws_the_data_path() -> None:
    r = mx("--help")
    assert r.returncode == 0
    assert "data path of one task" in r.stdout
    for c in COMMANDS:
        assert c in r.stdout


def test_invalid_workflow_file_is_one_line_without_traceback(tmp_path: Path) -> None:
    wf = tmp_path / "bad.yaml"
    wf.write_text("name: bad\nroles:\n  a: {agent: 'agents.dummy:Talker', concurrency: lots}\n"
                  "routing: {type: cycle, roles: [a]}\n")
    r = mx("run", str(wf), "--no-progress")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"matrix_p2p: error: {wf}: roles.a.concurrency: Expected `int`, got `str`")


def test_unknown_role_is_one_line() -> None:
    r = mx("worker", "coral", "--role", "referee", "--nats", "nats://127.0.0.1:1")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("matrix_p2p: error: --role: unknown role(s) referee")


def test_unreachable_nats_is_one_line() -> None:
    port = free_port()
    r = mx("status", "coral", "--nats", f"nats://127.0.0.1:{port}", timeout=60)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"matrix_p2p: error: cannot connect to NATS at nats://127.0.0.1:{port}")
    assert "Traceback" not in r.stderr


def test_a_fleet_from_the_cli_alone(tmp_path: Path) -> None:
    """nats-server, sim-llm, two workers (judge; all), submit, sink --expect N."""
    n = 40
    nats_port, sim_port = free_port(), free_port()
    url = f"nats://127.0.0.1:{nats_port}"
    llm = f"http://127.0.0.1:{sim_port}/v1"
    out = tmp_path / "coral.jsonl"
    with procs() as ps:
        ps.append(Proc(["nats-server", "--port", str(nats_port), "--store", str(tmp_path / "st"),
                        "--sync-interval"], tmp_path / "nats.log"))
        ps.append(Proc(["sim-llm", "--port", str(sim_port), "--seed", "7"], tmp_path / "sim.log"))
        wait_port(nats_port)
        wait_port(sim_port)
        ps.append(Proc(["worker", "coral", "--role", "judge", "--nats", url,
                        "--llm-url", llm], tmp_path / "judge.log"))
        ps.append(Proc(["worker", "coral", "--role", "all", "--nats", url,
                        "--llm-url", llm, "--concurrency", "200"], tmp_path / "all.log"))
        sub = mx("submit", "coral", "--nats", url, "--limit", str(n))
        assert sub.returncode == 0, sub.stderr
        assert f"submitted {n} new tasks" in sub.stderr
        again = mx("submit", "coral", "--nats", url, "--limit", str(n))
        assert f"submitted 0 new tasks, {n} already submitted" in again.stderr
        sink = mx("sink", "coral", "--nats", url, "--out", str(out), "--expect", str(n),
                  "--timeout", "120", timeout=150)
        assert sink.returncode == 0, sink.stderr
        status = mx("status", "coral", "--nats", url, "--json")
        assert status.returncode == 0, status.stderr
        st = json.loads(status.stdout)
        workers = ps[2:]
        for w in workers:
            assert w.stop() == 0, w.text()[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert len(ids) == n and len(set(ids)) == n
    assert all(r["status"] == "done" for r in rows)
    assert st["done"] == n and st["live_tasks"] == 0
    # the judge-only worker took its share from the judge consumer it shares with the other
    def stopped(w: Proc) -> dict[str, int]:
        lines = [json.loads(x) for x in w.text().splitlines() if '"worker.stopped"' in x]
        assert lines, w.text()[-2000:]
        return lines[-1]

    judge_hops, all_hops = stopped(workers[0])["hops"], stopped(workers[1])["hops"]
    assert judge_hops > 0 and all_hops > 0
    assert sum(len(r["dialogue"]) for r in rows) == judge_hops + all_hops
    assert '"event": "worker.ready"' in workers[0].text()
