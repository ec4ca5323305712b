"""Coral against simulated vLLM replicas that die, hang and answer garbage mid-run."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from matrix_p2p.broker import EmbeddedNats, free_port
from tests.chaos.harness import (
    ROOT,
    Proc,
    check_exactly_once,
    count_lines,
    expected_ids,
    mx,
    processes,
    status_json,
    wait_for,
    write_workflow,
)

pytestmark = pytest.mark.chaos

CORAL = """
resources:
  llm:
    default: {max_tokens: 64, timeout_s: 2.0, max_retries: 2, temperature: 0.7}
roles:
  teacher:
    agent: matrix_p2p_agents.coral:Teacher
    prompt: 'Give your reasoning, then a line "Answer: <letter>".'
  student:
    agent: matrix_p2p_agents.coral:Student
    prompt: 'Respond, then a line "Answer: <letter>".'
  judge:
    agent: matrix_p2p_agents.coral:Judge
    prompt: 'Reply "Verdict: AGREE or DISAGREE" and "Final: <letter>".'
routing: {type: cycle, roles: [teacher, student, judge], stop_when: agreed, max_turns: 9}
limits: {ack_wait_s: 3, retry_backoff_s: 0.2, max_deliveries: 6}
"""


def _set_faults(port: int, **faults: float) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/sim/faults",
                                 data=json.dumps(faults).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def _faults(port: int) -> dict[str, int]:
    """The faults a simulator has injected so far (its /sim/stats)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/sim/stats", timeout=10) as resp:
        faults: dict[str, int] = json.load(resp)["faults"]
    return faults


def _wait_http(port: int) -> None:
    def up() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return True
        except OSError:
            return False
    wait_for(up, 30, f"the simulator on port {port}")


def test_llm_replica_dies_hangs_and_answers_garbage(tmp_path: Path) -> None:
    n = 120
    questions = (ROOT / "workflows/data/coral_questions.jsonl").read_text().splitlines()[:n]
    wf = write_workflow(tmp_path, "coralchaos", CORAL, [json.loads(q) for q in questions])
    out = tmp_path / "out.jsonl"
    pa, pb = free_port(), free_port()
    with EmbeddedNats(store_dir=tmp_path / "nats", sync="interval") as server, \
            processes() as ps:
        url = server.url
        sim_args = ["--output-tokens-mean", "24", "--seed"]
        sim_a = Proc(["sim-llm", "--port", str(pa), *sim_args, "1"], tmp_path / "sim_a.log")
        sim_b = Proc(["sim-llm", "--port", str(pb), *sim_args, "2"], tmp_path / "sim_b.log")
        ps.extend([sim_a, sim_b])
        _wait_http(pa)
        _wait_http(pb)
        llm = ["--llm-url", f"http://127.0.0.1:{pa}/v1", "--llm-url", f"http://127.0.0.1:{pb}/v1"]
        fleet = [Proc(["worker", str(wf), "--role", "all", "--nats", url, *llm],
                      tmp_path / f"w{i}.log") for i in range(2)]
        ps.extend(fleet)
        # Long enough by construction: only the first rows are submitted before the
        # faults; the rest only after them, so the run cannot finish first.
        head = n // 6
        assert mx("submit", str(wf), "--nats", url, "--limit", str(head)).returncode == 0
        sink = Proc(["sink", str(wf), "--nats", url, "--out", str(out), "--expect", str(n),
                     "--timeout", "240"], tmp_path / "sink.log")
        ps.append(sink)
        wait_for(lambda: count_lines(out) >= 1, 120, "the first result (both replicas up)")
        # replica A dies; replica B starts hanging on some requests and answering garbage
        sim_a.kill9()
        _set_faults(pb, garbage_rate=0.15, timeout_rate=0.05, hang_s=30.0)
        assert mx("submit", str(wf), "--nats", url).returncode == 0  # the other rows
        done_before = count_lines(out)
        wait_for(lambda: _faults(pb)["timeout"] > 0 and _faults(pb)["garbage"] > 0, 120,
                 "a timeout and a garbage answer from replica B")
        wait_for(lambda: count_lines(out) >= min(n, done_before + n // 5), 120,
                 "progress on the faulty replica alone")
        # A comes back on the same port; the breaker re-probes it
        sim_a.start()
        _wait_http(pa)
        assert sink.wait(timeout=240) == 0, sink.text()[-3000:]
        for w in fleet:
            assert w.stop() == 0, w.text()[-3000:]
        assert sim_a.kills == 1
        statuses = check_exactly_once(out, expected_ids(wf), status_json(wf, url))
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        endpoints = {t["endpoint"] for r in rows for t in r["dialogue"] if t.get("endpoint")}
        print(statuses, "endpoints", endpoints,
              "failed reasons", {r["error"] for r in rows if r["status"] == "failed"})
        assert len(endpoints) == 2  # both replicas served
        faults = _faults(pb)
        print("faults injected by replica B", faults)
        assert faults["garbage"] > 0 and faults["timeout"] > 0  # the faults did happen
