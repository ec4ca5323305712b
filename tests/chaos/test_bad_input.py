"""Garbage straight onto role subjects while a run is going: dead-lettered, the run completes.

The 10 MB case: the broker's max_payload (8 MB for the embedded server) refuses
the publish itself, and the publisher gets a one-line ``PayloadTooLargeError``;
nothing reaches a worker. Just under the limit, garbage is dead-lettered with
its first bytes kept (``Mx-Truncated`` says how many), and a valid envelope
that would outgrow the limit at its next hop has its big value offloaded to the
object store and completes (``runtime/offload.py``; without offload it would
end as failed: ``tests/unit/test_hop.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import msgspec
import pytest

from matrix_p2p import envelope
from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.bus import ConnectOptions, PayloadTooLargeError, connect
from matrix_p2p.runtime.topology import Names
from tests.chaos.harness import (
    Proc,
    check_exactly_once,
    expected_ids,
    mx,
    processes,
    status_json,
    wait_for,
    write_workflow,
)

pytestmark = pytest.mark.chaos

WF = """
roles:
  teacher: {agent: "matrix_p2p_agents.dummy:Talker", llm: null, concurrency: 50}
  student: {agent: "matrix_p2p_agents.dummy:Talker", llm: null, concurrency: 50}
  judge:   {agent: "matrix_p2p_agents.dummy:Decider", llm: null, concurrency: 50, options: {p_stop: 0.5}}
routing: {type: cycle, roles: [teacher, student, judge], stop_when: agreed, max_turns: 12}
limits: {ack_wait_s: 2, retry_backoff_s: 0.1}
"""


async def _inject(url: str, name: str) -> dict[str, str]:
    """Publish every kind of bad input; returns what each should be dead-lettered for."""
    bus = await connect(ConnectOptions(url=url, name="chaos-injector"))
    names = Names(name)
    teacher = names.task("teacher")
    near_max = bus.max_payload - 1000
    try:
        cases = {
            "random bytes": os.urandom(3000),
            "wrong shape": msgspec.msgpack.encode({"id": 1, "turns": "nope"}),
            "not a struct": msgspec.msgpack.encode([1, 2, 3]),
            "unknown workflow": envelope.encode(envelope.new_task(
                task_id="ghost-wf", workflow="no_such_workflow", role="teacher", row={})),
            "unknown role": envelope.encode(envelope.new_task(
                task_id="ghost-role", workflow=name, role="referee", row={})),
            "already done": envelope.encode(msgspec.structs.replace(envelope.new_task(
                task_id="ghost-done", workflow=name, role="teacher", row={}), status="done")),
            "near-max garbage": b"\xc1" * near_max,
        }
        for data in cases.values():
            await bus.publish(teacher, data)
        # a valid task whose envelope would outgrow max_payload at its next hop (offloaded)
        big = envelope.new_task(task_id="huge-row", workflow=name, role="teacher",
                                row={"blob": "z" * (bus.max_payload - 3000)})
        await bus.publish(teacher, envelope.encode(big))
        # 10 MB: refused by the broker, with a clear one-line error
        with pytest.raises(PayloadTooLargeError) as err:
            await bus.publish(teacher, os.urandom(10 * 1024 * 1024))
        assert str(err.value) == (
            f"publish to {teacher} refused: {10 * 1024 * 1024} bytes exceed the broker's "
            f"max_payload of {bus.max_payload} bytes")
    finally:
        await bus.close()
    return {k: v.hex()[:16] for k, v in cases.items()}


def test_bad_input_is_dead_lettered_and_the_run_completes(tmp_path: Path) -> None:
    n = 400
    name = f"bad{int(time.time() * 1000) % 100000}"
    wf = write_workflow(tmp_path, name, WF, [{"n": i} for i in range(n)])
    out = tmp_path / "out.jsonl"
    with EmbeddedNats(store_dir=tmp_path / "nats", sync="interval") as server, processes() as ps:
        url = server.url
        ps.append(Proc(["worker", str(wf), "--role", "all", "--nats", url],
                       tmp_path / "worker.log"))
        assert mx("submit", str(wf), "--nats", url).returncode == 0
        asyncio.run(_inject(url, name))
        sink = Proc(["sink", str(wf), "--nats", url, "--out", str(out), "--expect", str(n + 1),
                     "--timeout", "120"], tmp_path / "sink.log")
        ps.append(sink)
        assert sink.wait(timeout=150) == 0, sink.text()[-2000:]
        wait_for(lambda: status_json(wf, url)["dead_letters"] >= 7, 30, "7 dead letters")
        st = status_json(wf, url)
        statuses = check_exactly_once(out, expected_ids(wf), st, extra={"huge-row"})
        assert statuses["failed"] == 0
        huge = next(json.loads(x) for x in out.read_text().splitlines() if '"huge-row"' in x)
        assert huge["status"] == "done", huge["error"]
        assert huge["input"]["blob"] == "z" * (8 * 1024 * 1024 - 3000)

        ls = mx("dlq", "list", str(wf), "--nats", url, "--json")
        assert ls.returncode == 0, ls.stderr
        letters = [json.loads(x) for x in ls.stdout.splitlines()]
        assert st["dead_letters"] == len(letters) == 7
        reasons = sorted(dl["reason"] for dl in letters)
        assert all(dl["subject"] == f"mx.{name}.task.teacher" for dl in letters)
        # handlers run concurrently: the dead letters' order is not the publish order
        expected_reasons = [
            lambda r: r == "invalid envelope: Expected `str`, got `int` - at `$.id`",
            lambda r: r == "invalid envelope: Expected `object`, got `array`",
            lambda r: "workflow 'no_such_workflow' role 'teacher' arrived on" in r,
            lambda r: "role 'referee' arrived on" in r,
            lambda r: r == "task ghost-done is already done",
            lambda r: r.startswith(f"undecodable envelope ({8 * 1024 * 1024 - 1000} bytes)"),
            # random bytes last: they may happen to decode as some msgpack value
            lambda r: r.startswith(("undecodable envelope (3000 bytes)", "invalid envelope")),
        ]
        for check in expected_reasons:
            matching = [r for r in reasons if check(r)]
            assert matching, reasons
            reasons.remove(matching[0])
        truncated = [dl for dl in letters if dl["truncated"]]
        assert len(truncated) == 1
        assert truncated[0]["truncated"].startswith(f"original {8 * 1024 * 1024 - 1000} bytes")
        ghost = next(dl for dl in letters if dl["task"] == "ghost-role")
        shown = mx("dlq", "show", str(wf), str(ghost["seq"]), "--nats", url)
        assert shown.returncode == 0 and '"id": "ghost-role"' in shown.stdout
        assert "Mx-Reason: envelope for workflow" in shown.stdout
        # the worker logged each one and kept going
        assert len(ps[0].events("worker.dead_letter")) == 7
        assert ps[0].stop() == 0


def test_dlq_cli_errors_are_one_line(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path, "dlqcli", WF, [{"n": 1}])
    with EmbeddedNats(store_dir=tmp_path / "nats", sync="interval") as server:
        r = mx("dlq", "show", str(wf), "42", "--nats", server.url)
        assert r.returncode == 2
        assert r.stderr.strip() == ("matrix_p2p: error: no dead letter #42 in MX_DLQCLI_DLQ "
                                    "(see `dlq list dlqcli`)")
        r = mx("dlq", "requeue", str(wf), "--nats", server.url)
        assert r.returncode == 2
        assert r.stderr.strip().endswith("give dead-letter sequence numbers or --all (not both)")
        r = mx("replay", str(wf), "--role", "referee", "--nats", server.url)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert r.stderr.strip() == ("matrix_p2p: error: --role: unknown role 'referee' in "
                                    "workflow 'dlqcli' (roles: teacher, student, judge)")
        r = mx("dlq", "list", str(wf), "--nats", server.url)
        assert r.returncode == 0 and r.stdout.strip() == "no dead letters for workflow dlqcli"
    for cmd in (["dlq", "--help"], ["dlq", "list", "--help"], ["dlq", "show", "--help"],
                ["dlq", "requeue", "--help"], ["replay", "--help"]):
        h = mx(*cmd)
        assert h.returncode == 0 and "usage: python -m matrix_p2p " + " ".join(cmd[:-1]) in h.stdout
