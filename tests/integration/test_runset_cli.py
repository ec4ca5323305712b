"""Issue 17 from the command line: `submit` + `sink --limit` mean a set of tasks, and the
store's other tasks never reach the output; duplicate ids are one line."""

from __future__ import annotations

import json
from pathlib import Path

from matrix_p2p.broker import EmbeddedNats
from tests.conftest import DUMMY_YAML, make_spec, write_rows
from tests.procs import Proc, mx, procs


def _ids(out: Path) -> list[str]:
    return sorted(json.loads(ln)["id"] for ln in out.read_text().splitlines())


def test_sink_limit_writes_exactly_the_tasks_submit_limit_made(nats_server: EmbeddedNats,
                                                               tmp_path: Path) -> None:
    spec = make_spec(tmp_path, DUMMY_YAML, [{"n": i} for i in range(6)])
    wf, url = str(spec.path), nats_server.url
    with procs() as ps:
        ps.append(Proc(["worker", wf, "--role", "all", "--nats", url], tmp_path / "w.log"))
        assert mx("submit", wf, "--nats", url, "--limit", "5").returncode == 0
        small = mx("sink", wf, "--nats", url, "--out", str(tmp_path / "o3.jsonl"), "--limit", "3",
                   "--timeout", "60")
        assert small.returncode == 0, small.stderr
        assert _ids(tmp_path / "o3.jsonl") == ["rows-1-t0", "rows-2-t0", "rows-3-t0"]
        assert "3 rows in" in small.stderr and "its tasks: 3 done, 0 failed" in small.stderr
        # another source on the same store: its own tasks only, none of the first five
        other = write_rows(tmp_path / "other.jsonl", [{"n": 9}, {"n": 10}])
        assert mx("submit", wf, "--nats", url, "--source", str(other)).returncode == 0
        mine = mx("sink", wf, "--nats", url, "--out", str(tmp_path / "other.out.jsonl"),
                  "--source", str(other), "--timeout", "60")
        assert mine.returncode == 0, mine.stderr
        assert _ids(tmp_path / "other.out.jsonl") == ["other-1-t0", "other-2-t0"]


def test_duplicate_ids_are_one_line_before_anything_is_submitted(nats_server: EmbeddedNats,
                                                                 tmp_path: Path) -> None:
    spec = make_spec(tmp_path, DUMMY_YAML.replace("{path: rows.jsonl}",
                                                  "{path: rows.jsonl, id_field: k}"),
                     [{"k": "a"}, {"k": "b"}, {"k": "a"}])
    r = mx("submit", str(spec.path), "--nats", nats_server.url)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        f"matrix_p2p: error: {tmp_path / 'rows.jsonl'} line 3: duplicate id 'a' (k), first at "
        f"{tmp_path / 'rows.jsonl'} line 1: every input row needs its own id")
    assert "Traceback" not in r.stderr
