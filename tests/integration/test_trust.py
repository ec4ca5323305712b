"""Issue 10: each bug a new user met in the first hour, against the real broker.

Every test here failed on the code before the fix (see the issue's "Why").
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.bus import Bus
from matrix_p2p.errors import ConfigError
from matrix_p2p.runtime.sink import Sink
from tests.conftest import DUMMY_YAML, make_spec
from tests.integration.helpers import read_rows, run_until
from tests.procs import Proc, mx, procs


async def _sink_all(bus: Bus, spec, out: Path, n: int) -> Sink:  # type: ignore[no-untyped-def]
    import asyncio

    sink = Sink(bus, spec, out)
    async with asyncio.timeout(30):
        await sink.run(asyncio.Event(), expect=n)
    return sink


@pytest.mark.parametrize("damage", ["delete", "truncate", "other_run"])
async def test_a_damaged_output_is_rebuilt_from_the_stream(bus: Bus, tmp_path: Path,
                                                           damage: str) -> None:
    """Why: delete or truncate the output and run again: `run` hung forever."""
    n = 20
    spec = make_spec(tmp_path, DUMMY_YAML, [{"n": i} for i in range(n)])
    out = tmp_path / "out.jsonl"
    await run_until(bus, spec, out, expect=n)
    before = {r["id"] for r in read_rows(out)}
    assert len(before) == n
    if damage == "delete":
        out.unlink()
    elif damage == "truncate":
        lines = out.read_bytes().splitlines(keepends=True)
        out.write_bytes(b"".join(lines[:5]))
    else:  # a file of the same name from another store: its ids must not count
        out.write_text("".join(json.dumps({"id": f"x{i}"}) + "\n" for i in range(n)))
    await _sink_all(bus, spec, out, n)
    assert {r["id"] for r in read_rows(out)} == before


async def test_out_extension_decides_the_format(bus: Bus, tmp_path: Path) -> None:
    """Why: `--out x.parquet` on a JSONL workflow wrote JSON lines into `x.parquet`."""
    import pyarrow.parquet as pq

    n = 10
    spec = make_spec(tmp_path, DUMMY_YAML, [{"n": i} for i in range(n)])
    out = tmp_path / "x.parquet"
    await run_until(bus, spec, out, expect=n)
    assert pq.read_table(out).num_rows == n
    assert not (tmp_path / "x.jsonl").exists()  # the old code wrote its JSON lines here
    pq_spec = make_spec(tmp_path, DUMMY_YAML + "sink: {format: parquet}\n")
    await run_until(bus, pq_spec, tmp_path / "y.jsonl", expect=n)
    assert len(read_rows(tmp_path / "y.jsonl")) == n  # JSON lines, not Parquet bytes


def test_format_follows_out_and_a_contradiction_is_one_line(tmp_path: Path) -> None:
    """Why: `format: parquet` with `--out x.jsonl` wrote Parquet bytes into the .jsonl file."""
    from matrix_p2p.runtime.files import default_out, out_format

    spec = make_spec(tmp_path, DUMMY_YAML + "sink: {format: parquet}\n", [{"n": 1}])
    assert out_format(Path("x.jsonl")) == "jsonl"  # --out names the format
    assert default_out(spec) == Path(f"out/{spec.name}.parquet")  # else the workflow does
    assert out_format(Path("x.jsonl.zst")) == "jsonl.zst"
    assert out_format(Path("x.parquet")) == "parquet"
    bad = make_spec(tmp_path, DUMMY_YAML + "sink: {path: out/x.jsonl, format: parquet}\n")
    with pytest.raises(ConfigError) as err:
        default_out(bad)
    assert str(err.value) == (f"{bad.path}: sink.path 'out/x.jsonl' says jsonl but "
                              "sink.format says parquet: make them agree (or give --out)")


def test_an_unwritable_out_is_one_line(tmp_path: Path) -> None:
    """Why: an unwritable `--out` ended in an ExceptionGroup traceback."""
    (tmp_path / "afile").write_text("")
    r = mx("run", "dummy", "--limit", "2", "--store", str(tmp_path / "st"), "--no-progress",
           "--out", str(tmp_path / "afile" / "x.jsonl"))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "ExceptionGroup" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(
        f"matrix_p2p: error: --out {tmp_path / 'afile' / 'x.jsonl'}: cannot write:")
    assert not (tmp_path / "st").exists()  # checked before any broker started


FLAKY = """name: {name}
source: {{path: rows.jsonl}}
roles:
  only: {{agent: "matrix_p2p_agents.dummy:Flaky", llm: null, concurrency: 50}}
routing: {{type: cycle, roles: [only], stop_when: agreed, max_turns: 3}}
limits: {{ack_wait_s: 5, retry_backoff_s: 0.02, max_deliveries: 3}}
"""


def _flaky(tmp_path: Path, behaviours: list[str], name: str) -> Path:
    (tmp_path / "rows.jsonl").write_text(
        "".join(json.dumps({"behaviour": b}) + "\n" for b in behaviours))
    wf = tmp_path / f"{name}.yaml"
    wf.write_text(FLAKY.format(name=name))
    return wf


def test_failed_tasks_fail_the_run_and_retry_as_a_new_attempt(tmp_path: Path) -> None:
    """Why: failed tasks were never retried on a re-run, and `run` exited 0."""
    wf = _flaky(tmp_path, ["ok", "fail_first_attempt", "ok"], f"retry{os.getpid()}")
    out = tmp_path / "out.jsonl"
    args = ["run", str(wf), "--store", str(tmp_path / "st"), "--out", str(out), "--no-progress"]
    first = mx(*args)
    assert first.returncode == 1, first.stderr
    assert "output: 2 done, 1 failed" in first.stderr
    assert "1 task(s) failed: re-run with --retry-failed" in first.stderr
    assert mx(*args, "--accept-failures").returncode == 0
    again = mx(*args, "--retry-failed")
    assert again.returncode == 0, again.stderr
    assert "output: 3 done, 0 failed (1 retried)" in again.stderr
    rows = read_rows(out)
    assert len(rows) == 3 and {r["status"] for r in rows} == {"done"}
    assert sorted(r["id"].rsplit("~", 1)[-1] for r in rows if "~" in r["id"]) == ["a2"]


def _gone(pid: int, timeout: float = 15.0) -> bool:
    """Whether ``pid`` (not our child) exits within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        status = Path(f"/proc/{pid}/status")
        if status.exists() and "\\nState:\\tZ" in status.read_text():
            return True
        time.sleep(0.05)  # another process's exit: nothing to wait on
    return False


def _wait_file(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # written by another process
    assert path.exists(), path


def test_the_broker_dies_with_run_and_the_next_run_starts_one(tmp_path: Path) -> None:
    """Why: kill -9 of `run` left its nats-server running; the next run started a second."""
    wf = _flaky(tmp_path, ["ok", "ok"], f"brk{os.getpid()}")
    store = tmp_path / "st"
    args = ["run", str(wf), "--store", str(store), "--out", str(tmp_path / "o.jsonl"),
            "--no-progress"]
    with procs() as ps:
        ps.append(Proc(args, tmp_path / "run1.log"))
        _wait_file(store / "broker.json")
        broker = json.loads((store / "broker.json").read_text())["pid"]
        ps[0].p.kill()
        ps[0].p.wait()
        assert _gone(broker), "the broker outlived its run"
    second = mx(*args)
    assert second.returncode == 0, second.stderr
    assert not (store / "broker.json").exists()


def test_a_live_orphan_broker_is_adopted_and_stopped(tmp_path: Path) -> None:
    """Where no parent-death signal exists: the next run adopts the orphan, never a second."""
    wf = _flaky(tmp_path, ["ok"], f"adopt{os.getpid()}")
    store = tmp_path / "st"
    orphan = EmbeddedNats(store_dir=store, sync="interval")
    orphan.start()
    try:
        (store / "broker.json").write_text(json.dumps({"pid": orphan.pid, "port": orphan.port}))
        r = mx("run", str(wf), "--store", str(store), "--out", str(tmp_path / "o.jsonl"),
               "--no-progress")
        assert r.returncode == 0, r.stderr
        assert '"event": "broker.adopted"' in r.stderr and '"broker.started"' not in r.stderr
        assert orphan.proc is not None and orphan.proc.wait(timeout=15) is not None
    finally:
        orphan.cleanup()


def test_a_second_live_run_on_one_store_is_refused(tmp_path: Path) -> None:
    wf = _flaky(tmp_path, ["slow"], f"busy{os.getpid()}")
    store = tmp_path / "st"
    with procs() as ps:
        ps.append(Proc(["run", str(wf), "--store", str(store), "--no-progress",
                        "--out", str(tmp_path / "o.jsonl")], tmp_path / "run1.log"))
        _wait_file(store / "broker.json")
        r = mx("run", str(wf), "--store", str(store), "--out", str(tmp_path / "p.jsonl"))
        assert r.returncode == 2
        assert r.stderr.strip().splitlines()[-1] == (
            f"matrix_p2p: error: --store {store}: in use by another run (pid {ps[0].pid}); "
            "stop it first or use another --store")


async def test_a_bug_in_an_agent_fails_at_once_with_one_traceback(bus: Bus, tmp_path: Path) -> None:
    """Why: an AttributeError in an agent was retried five times, a traceback each time."""
    import structlog

    wf = _flaky(tmp_path, ["bug", "ok"], f"bug{os.getpid()}")
    from matrix_p2p.workflow import loader

    spec = loader.load(str(wf))
    out = tmp_path / "o.jsonl"
    with structlog.testing.capture_logs() as logs:
        _, stats, _ = await run_until(bus, spec, out, expect=2)
    by = {r["input"]["behaviour"]: r for r in read_rows(out)}
    assert by["bug"]["status"] == "failed"
    assert by["bug"]["error"] == (
        "bug in agent 'only' raised AttributeError: 'dict' object has no attribute "
        "'no_such_method'")
    assert stats.retried == 0
    bugs = [e for e in logs if e["event"] == "agent.bug"]
    assert len(bugs) == 1 and bugs[0]["exc_info"] is True


async def test_a_replay_counts_only_what_it_added(bus: Bus, tmp_path: Path) -> None:
    """Why: `replay` double-counted usage and rounds of the replayed task."""
    from matrix_p2p.runtime import replay as ops

    n = 10
    spec = make_spec(tmp_path, DUMMY_YAML, [{"n": i} for i in range(n)])
    out = tmp_path / "out.jsonl"
    await run_until(bus, spec, out, expect=n)
    originals = {r["id"]: r for r in read_rows(out)}
    await ops.replay(bus, spec, role="judge")
    await run_until(bus, spec, out, expect=2 * n, submit_rows=False)
    replays = [r for r in read_rows(out) if "~r" in r["id"]]
    assert len(replays) == n
    for row in replays:
        orig = originals[ops.split_replay_id(row["id"])[0]]
        added = row["dialogue"][len(orig["dialogue"]):]
        assert row["result"]["rounds"] == sum(1 for d in added if d["role"] == "judge")
        assert row["hops"] == len(added)
        assert set(row["timings"]["by_role"]) == {d["role"] for d in added}


@pytest.mark.parametrize(("args", "message"), [
    (["run", "dummy", "--concurrency", "0"], "--concurrency: must be positive, got 0"),
    (["run", "dummy", "--limit", "-1"], "--limit: must be at least 0, got -1"),
    (["worker", "dummy", "--role", "all", "--concurrency", "0", "--nats", "nats://127.0.0.1:9"],
     "--concurrency: must be positive, got 0"),
    (["submit", "dummy", "--limit", "-3", "--nats", "nats://127.0.0.1:9"],
     "--limit: must be at least 0, got -3"),
    (["sink", "dummy", "--out", "x.jsonl", "--timeout", "-1", "--nats", "nats://127.0.0.1:9"],
     "--timeout: must be positive, got -1.0"),
    (["replay", "dummy", "--role", "judge", "--generation", "0", "--nats", "nats://127.0.0.1:9"],
     "--generation: must be positive, got 0"),
    (["dlq", "show", "dummy", "0", "--nats", "nats://127.0.0.1:9"], "SEQ: must be positive, got 0"),
    (["sim-llm", "--port", "70000"], "--port: must be at most 65535, got 70000"),
])
def test_numeric_flags_are_checked_in_one_line(args: list[str], message: str) -> None:
    """Why: `--concurrency 0` hung; a negative `--limit` was accepted."""
    r = mx(*args, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"matrix_p2p: error: {message}"]


def peak_alive(rows: list[dict[str, object]]) -> int:
    """Most tasks alive at once, from the rows' own created/finished times."""
    events = []
    for r in rows:
        t = r["timings"]
        assert isinstance(t, dict)
        events += [(t["created_at"], 1), (t["finished_at"], -1)]
    peak = alive = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        alive += step
        peak = max(peak, alive)
    return peak


async def test_admission_holds_the_window(bus: Bus, tmp_path: Path) -> None:
    """Why: with `limits.max_inflight: 100`, 257 tasks were alive at once."""
    n = 1500
    yaml = DUMMY_YAML.replace("limits: {", "limits: {max_inflight: 100, ")
    spec = make_spec(tmp_path, yaml, [{"n": i} for i in range(n)])
    out = tmp_path / "out.jsonl"
    await run_until(bus, spec, out, expect=n, deadline_s=120)
    peak = peak_alive(read_rows(out))
    assert peak <= 100 + 10, peak


LOCAL_AGENT = '''
from matrix_p2p.agent import Agent


class Once(Agent):
    async def handle(self, task, ctx):
        ctx.say("{text}")
        task.state["agreed"] = True
'''


def test_a_changed_workflow_asks_for_new_version_or_reuse(tmp_path: Path) -> None:
    """Why: changing a prompt or the workflow and re-running silently reused old results."""
    name = f"ver{os.getpid()}"
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"n": i}) + "\n" for i in range(3)))
    (tmp_path / "my_agents.py").write_text(LOCAL_AGENT.format(text="v1"))
    wf = tmp_path / f"{name}.yaml"
    wf.write_text(f"name: {name}\nsource: {{path: rows.jsonl}}\n"
                  "roles:\n  only: {agent: 'my_agents:Once', llm: null}\n"
                  "routing: {type: cycle, roles: [only], stop_when: agreed, max_turns: 2}\n")
    out = tmp_path / "o.jsonl"
    args = ["run", str(wf), "--store", str(tmp_path / "st"), "--out", str(out), "--no-progress"]
    assert mx(*args).returncode == 0
    v1 = {r["code_version"] for r in read_rows(out)}
    assert len(v1) == 1 and "" not in v1

    (tmp_path / "my_agents.py").write_text(LOCAL_AGENT.format(text="v2"))  # a new prompt
    refused = mx(*args)
    assert refused.returncode == 2, refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"matrix_p2p: error: {wf}: the workflow or its agents' code changed")
    assert last.endswith("pass --new-version to start fresh rows under this version, or "
                         "--reuse to keep the old results")

    reused = mx(*args, "--reuse")
    assert reused.returncode == 0, reused.stderr
    assert [r["dialogue"][0]["content"] for r in read_rows(out)] == ["v1"] * 3

    fresh = mx(*args, "--new-version")
    assert fresh.returncode == 0, fresh.stderr
    rows = read_rows(out)
    assert len(rows) == 3 and {r["dialogue"][0]["content"] for r in rows} == {"v2"}
    (v2,) = {r["code_version"] for r in rows}
    assert v2 not in v1 and all(r["id"].endswith(f"~v{v2[:8]}") for r in rows)
    assert mx(*args).returncode == 0  # the new version is now the store's: no question
    assert len(read_rows(out)) == 3


def test_rows_say_what_produced_them(tmp_path: Path) -> None:
    """Why: rows did not say which model answered, the finish_reason or the messages sent;
    `source` was an absolute path; `row_index` counted from 1."""
    out = tmp_path / "coral.jsonl"
    r = mx("run", "coral", "--limit", "3", "--store", str(tmp_path / "st"), "--out", str(out),
           "--no-progress", timeout=180)
    assert r.returncode == 0, r.stderr
    rows = read_rows(out)
    assert sorted(row["row_index"] for row in rows) == [0, 1, 2]
    assert {row["source"] for row in rows} == {"data/coral_questions.jsonl"}
    turns = [t for row in rows for t in row["dialogue"]]
    assert turns and all(t["model"] and t["finish_reason"] for t in turns)
    assert not any("messages" in t for t in turns)  # off unless sink.messages

    import matrix_p2p_workflows

    coral = Path(matrix_p2p_workflows.__file__).parent / "coral.yaml"
    wf = tmp_path / f"msgs{os.getpid()}.yaml"
    wf.write_text(coral.read_text().replace("name: coral", f"name: msgs{os.getpid()}")
                  .replace("path: data/coral_questions.jsonl",
                           f"path: {coral.parent / 'data' / 'coral_questions.jsonl'}")
                  .replace("  format: jsonl", "  format: jsonl\n  messages: true"))
    out2 = tmp_path / "m.jsonl"
    r2 = mx("run", str(wf), "--limit", "2", "--store", str(tmp_path / "st2"), "--out", str(out2),
            "--no-progress", timeout=180)
    assert r2.returncode == 0, r2.stderr
    rows2 = read_rows(out2)
    assert {row["source"] for row in rows2} == {str(coral.parent / "data/coral_questions.jsonl")}
    first = rows2[0]["dialogue"][0]
    assert first["messages"][0]["role"] == "system" and first["messages"][-1]["role"] == "user"
