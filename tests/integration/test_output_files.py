"""Issue 17: an output file has one writer, its check on start finds a task twice, and
formats are explicit. Against the real broker; each test failed on the code before.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from matrix_p2p.bus import Bus
from matrix_p2p.errors import ConfigError
from matrix_p2p.runtime.sink import Sink
from matrix_p2p.runtime.sink_state import load_sidecar, save_sidecar
from tests.conftest import DUMMY_YAML, make_spec
from tests.integration.helpers import read_rows, run_until
from tests.procs import Proc, mx, procs


def _busy(out: Path, pid: int) -> str:
    return (f"matrix_p2p: error: --out {out}: is being written by another sink (pid {pid}); "
            "stop it first or write to another file")


def _files(out: Path) -> dict[str, bytes]:
    """The output and its side files, byte for byte (the lock file aside)."""
    return {p.name: p.read_bytes() for p in out.parent.iterdir()
            if p.name.startswith(out.name) and not p.name.endswith(".mx.lock")}


@pytest.mark.parametrize("name", ["out.jsonl", "out.parquet"])
async def test_a_second_sink_on_one_output_is_refused_before_it_touches_it(
        bus: Bus, tmp_path: Path, name: str) -> None:
    """Why: two sinks on one output both appended: 285 lines for 200 distinct ids."""
    n = 5
    spec = make_spec(tmp_path, DUMMY_YAML, [{"n": i} for i in range(n)])
    out = tmp_path / name
    first = Sink(bus, spec, out)
    stop, ready = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(first.run(stop, ready=ready))
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        before = _files(out)
        second = Sink(bus, spec, out, durable="another")
        with pytest.raises(ConfigError) as err:
            async with asyncio.timeout(10):
                await second.run(asyncio.Event(), expect=0)
        assert f"matrix_p2p: error: {err.value}" == _busy(out, os.getpid())
        assert _files(out) == before
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await running
    # the first sink's end released it: the next one writes
    await run_until(bus, spec, out, expect=n)


FLAKY = """name: {name}
source: {{path: rows.jsonl}}
roles:
  only: {{agent: "matrix_p2p_agents.dummy:Flaky", llm: null}}
routing: {{type: cycle, roles: [only], stop_when: agreed, max_turns: 3}}
"""


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)  # another process's progress: nothing to wait on
    raise AssertionError(f"timed out waiting for {what}")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_a_second_run_or_sink_on_one_output_is_refused_before_it_starts(tmp_path: Path) -> None:
    """Why: two runs (different stores) on one `--out`: one died with a 40-line
    ExceptionGroup traceback, the file ended with rows twice, and a later run trusted it."""
    name = f"onewriter{os.getpid()}"
    (tmp_path / "rows.jsonl").write_text(json.dumps({"behaviour": "slow", "seconds": 600}) + "\n")
    wf = tmp_path / f"{name}.yaml"
    wf.write_text(FLAKY.format(name=name))
    out = tmp_path / "o.jsonl"
    store, other = tmp_path / "st", tmp_path / "st2"
    with procs() as ps:
        ps.append(Proc(["run", str(wf), "--store", str(store), "--out", str(out),
                        "--no-progress"], tmp_path / "run1.log"))
        pid = ps[0].pid
        try:
            _wait_for(lambda: _read(tmp_path / "o.jsonl.mx.lock") == str(pid), "the first run's lock")
            _wait_for(lambda: (store / "broker.json").exists(), "the first run's broker")
            quick = tmp_path / "quick.jsonl"  # were it let through, it would end at once
            quick.write_text(json.dumps({"behaviour": "ok"}) + "\n")
            r = mx("run", str(wf), "--store", str(other), "--out", str(out), "--no-progress",
                   "--source", str(quick), timeout=60)
            assert r.returncode == 2, r.stderr
            assert "Traceback" not in r.stderr
            assert r.stderr.strip().splitlines()[-1] == _busy(out, pid)
            assert not other.exists()  # refused before its broker started
            port = json.loads((store / "broker.json").read_text())["port"]
            s = mx("sink", str(wf), "--out", str(out), "--nats", f"nats://127.0.0.1:{port}",
                   "--timeout", "30", timeout=60)
            assert s.returncode == 2, s.stderr
            assert "Traceback" not in s.stderr
            assert s.stderr.strip().splitlines()[-1] == _busy(out, pid)
        finally:  # its slow task would hold a drain for its whole ack wait
            ps[0].p.kill()
            ps[0].p.wait()


@pytest.mark.parametrize("damage", ["a line twice", "an earlier attempt", "a line not a row"])
async def test_a_trusted_output_holding_a_task_twice_is_rebuilt(bus: Bus, tmp_path: Path,
                                                               damage: str) -> None:
    """Why: rows appended by a second writer (its sidecar agreeing) were trusted: a
    later run kept every task twice."""
    n = 10
    spec = make_spec(tmp_path, DUMMY_YAML, [{"n": i} for i in range(n)])
    out = tmp_path / "out.jsonl"
    await run_until(bus, spec, out, expect=n)
    rows = read_rows(out)
    ids = sorted(r["id"] for r in rows)
    if damage == "a line twice":
        extra = json.dumps(rows[0]) + "\n"
    elif damage == "an earlier attempt":  # the same task: one row per task, the latest attempt
        extra = json.dumps({**rows[0], "id": rows[0]["id"] + "~a2"}) + "\n"
    else:
        extra = "not a row\n"
    with out.open("a") as fh:
        fh.write(extra)
    side = load_sidecar(out)
    assert side is not None
    side.good_length = out.stat().st_size  # as a second writer records its own write
    save_sidecar(out, side)
    with structlog.testing.capture_logs() as logs:
        sink = Sink(bus, spec, out)
        async with asyncio.timeout(30):
            await sink.run(asyncio.Event(), expect=n)
    assert sorted(r["id"] for r in read_rows(out)) == ids
    assert sink.count == n
    reason = "unreadable line" if damage == "a line not a row" else "duplicate ids"
    assert [e["reason"] for e in logs if e["event"] == "sink.rebuild"] == [reason]


SUPPORTED_OUT = "(supported: .jsonl, .jsonl.zst, .parquet)"


@pytest.mark.parametrize(("name", "said"), [
    ("x.csv", "unsupported output format '.csv'"),
    ("x.json", "unsupported output format '.json'"),
    ("x", "no extension names its format"),
])
def test_an_out_of_another_format_is_one_line(tmp_path: Path, name: str, said: str) -> None:
    """Why: `--out x.csv`, `x.json` or no extension silently wrote JSON lines."""
    out = tmp_path / name
    line = f"matrix_p2p: error: --out {out}: {said} {SUPPORTED_OUT}"
    r = mx("run", "dummy", "--limit", "2", "--store", str(tmp_path / "st"), "--no-progress",
           "--out", str(out))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1] == line
    assert not (tmp_path / "st").exists() and not out.exists()
    # before connecting: the port is closed, and the answer is still about the file
    s = mx("sink", "dummy", "--out", str(out), "--nats", "nats://127.0.0.1:9")
    assert s.returncode == 2, s.stderr
    assert s.stderr.strip().splitlines() == [line]


def test_a_sink_path_of_another_format_is_one_line(tmp_path: Path) -> None:
    from matrix_p2p.runtime.files import default_out

    spec = make_spec(tmp_path, DUMMY_YAML + "sink: {path: out/x.csv}\n", [{"n": 1}])
    with pytest.raises(ConfigError) as err:
        default_out(spec)
    assert str(err.value) == (f"{spec.path}: sink.path 'out/x.csv': unsupported output "
                              f"format '.csv' {SUPPORTED_OUT}")


def test_a_source_of_another_format_is_one_line_before_anything(tmp_path: Path) -> None:
    """Why: `--source x.txt` was read as JSON lines, each line submitted as a failed task."""
    src = tmp_path / "rows.txt"
    src.write_text('{"n": 1}\n')
    line = (f"matrix_p2p: error: source {src}: unsupported source format '.txt' (supported: "
            ".jsonl, .jsonl.zst, .parquet, .csv, .tsv)")
    r = mx("run", "dummy", "--source", str(src), "--store", str(tmp_path / "st"),
           "--no-progress", "--out", str(tmp_path / "o.jsonl"))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1] == line
    assert not (tmp_path / "st").exists()
    s = mx("submit", "dummy", "--source", str(src), "--nats", "nats://127.0.0.1:9")
    assert s.returncode == 2, s.stderr
    assert s.stderr.strip().splitlines() == [line]
