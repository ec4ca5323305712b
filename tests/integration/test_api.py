"""The Python API against the real nats-server: sources in memory, the summary file,
a library's logging, and submit / results / collect around ``serve``."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import structlog

import matrix_p2p
from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.runtime.summary import summary_path
from tests.conftest import make_spec
from tests.integration.test_llm_client import FakeOpenAI, servers
from tests.procs import ROOT, env

__all__ = ["servers"]  # the fixture, imported for these tests

TWO_ROLES = """
source: {path: none.jsonl}
roles:
  teacher: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
  judge: {agent: "matrix_p2p_agents.dummy:Decider", llm: null, options: {p_stop: 1.0}}
routing: {type: cycle, roles: [teacher, judge], stop_when: agreed, max_turns: 4}
limits: {ack_wait_s: 5, retry_backoff_s: 0.05}
"""
FLAKY = """
source: {path: none.jsonl}
roles:
  a: {agent: "matrix_p2p_agents.dummy:Flaky", llm: null}
routing: {type: cycle, roles: [a], max_turns: 1}
limits: {ack_wait_s: 5, retry_backoff_s: 0.05}
"""
ROWS = [{"q": "one"}, {"q": "two"}, {"q": "three"}]


@pytest.fixture
def unconfigured() -> Iterator[None]:
    """structlog as a fresh process has it (another test may have run the CLI in-process)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def text(path: Path) -> str:
    return path.read_text()


def read(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in text(path).splitlines()]


async def test_rows_in_memory_run_resume_and_write_the_summary(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    spec = make_spec(tmp_path, TWO_ROLES)
    out, store = tmp_path / "o.jsonl", tmp_path / "st"
    result = await matrix_p2p.run_async(spec, source=ROWS, out=out, store=store,
                                        nats=nats_server.url)
    assert (result.rows, result.dataset_done, result.dataset_failed) == (3, 3, 0)
    (rows_file,) = (store / "rows").iterdir()
    rows = sorted(read(out), key=lambda r: str(r["row_index"]))
    assert [r["id"] for r in rows] == [f"{rows_file.stem}-{i}-t0" for i in (1, 2, 3)]
    assert [r["input"] for r in rows] == ROWS
    assert result.summary == str(summary_path(out))
    assert json.loads(text(summary_path(out)))["rows"] == 3
    # the same rows again (a generator this time): the same file and ids, nothing rerun
    again = await matrix_p2p.run_async(spec, source=(dict(r) for r in ROWS), out=out,
                                       store=store, nats=nats_server.url)
    assert (again.rows, again.expected, again.done, again.submit.submitted) == (3, 3, 0, 0)
    assert [p.name for p in (store / "rows").iterdir()] == [rows_file.name]


async def test_id_field_names_the_tasks_of_rows_in_memory(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    spec = make_spec(tmp_path, TWO_ROLES.replace("none.jsonl}", "none.jsonl, id_field: qid}"))
    result = await matrix_p2p.run_async(
        spec, source=[{"qid": "alpha", **ROWS[0]}, {"qid": "beta", **ROWS[1]}],
        out=tmp_path / "o.jsonl", store=tmp_path / "st", nats=nats_server.url, limit=1)
    assert [r["id"] for r in read(tmp_path / "o.jsonl")] == ["alpha-t0"]
    assert result.expected == 1


async def test_one_llm_url_string_is_one_endpoint_and_gets_the_model_settings(
    tmp_path: Path, nats_server: EmbeddedNats, servers: Callable[[], Awaitable[FakeOpenAI]]
) -> None:
    fake = await servers()
    spec = make_spec(tmp_path, """
source: {path: none.jsonl}
resources:
  llm:
    default: {model: served-model, top_p: 0.8, seed: 3, stop: [END], extra_body: {top_k: 4}}
roles:
  ask: {agent: "tests.integration.chat_agents:Asker"}
routing: {type: cycle, roles: [ask], stop_when: agreed}
limits: {ack_wait_s: 5}
""")
    result = await matrix_p2p.run_async(spec, source=ROWS[:2], out=tmp_path / "o.jsonl",
                                        store=tmp_path / "st", nats=nats_server.url,
                                        llm_urls=fake.url,  # one URL, as a string
                                        # the fake answers any model name but lists another
                                        preflight=False)
    assert (result.dataset_done, result.dataset_failed) == (2, 0)
    assert len(fake.bodies) == 2
    for body in fake.bodies:
        assert (body["model"], body["top_p"], body["seed"], body["stop"], body["top_k"]) == (
            "served-model", 0.8, 3, ["END"], 4)


SCRIPT = """
import sys
import matrix_p2p
from matrix_p2p.workflow.spec import parse
spec = parse('''
name: quiet
source: {path: none.jsonl, id_field: qid}
roles:
  a: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
routing: {type: cycle, roles: [a], max_turns: 1}
''')
# the second row has no qid: a bad row, which logs a warning
r = matrix_p2p.run(spec, source=[{"qid": "x"}, {"n": 1}], out=sys.argv[1] + "/o.jsonl",
                   store=sys.argv[1] + "/st")
print(r.dataset_done, r.dataset_failed)
"""


def test_run_prints_nothing_unless_the_application_configures_logging(tmp_path: Path) -> None:
    # a fresh interpreter: no test harness handler that would hide Python's last resort
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                       text=True, timeout=120, env=env(), cwd=ROOT, stdin=subprocess.DEVNULL)
    assert (r.returncode, r.stdout, r.stderr) == (0, "1 1\n", "")


async def test_the_matrix_p2p_logger_gets_the_events_when_configured(
    tmp_path: Path, nats_server: EmbeddedNats, unconfigured: None,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = make_spec(tmp_path, TWO_ROLES.replace("none.jsonl}", "none.jsonl, id_field: qid}"))
    caplog.set_level(logging.INFO, logger="matrix_p2p")
    await matrix_p2p.run_async(spec, source=[{"qid": "x"}, {"n": 1}], out=tmp_path / "o.jsonl",
                               store=tmp_path / "st", nats=nats_server.url)
    bad = [r for r in caplog.records if getattr(r, "mx_event", None) == "source.bad_row"]
    assert len(bad) == 1 and bad[0].levelno == logging.WARNING
    assert bad[0].name == "matrix_p2p.runtime.source"
    assert bad[0].getMessage().startswith("source.bad_row error=")
    assert all(r.name.startswith("matrix_p2p") for r in caplog.records)
    assert capsys.readouterr() == ("", "")  # records, not prints


async def test_log_level_prints_the_events_for_that_call_only(
    tmp_path: Path, nats_server: EmbeddedNats, unconfigured: None,
    capsys: pytest.CaptureFixture[str]
) -> None:
    spec = make_spec(tmp_path, TWO_ROLES.replace("none.jsonl}", "none.jsonl, id_field: qid}"))
    await matrix_p2p.run_async(spec, source=[{"qid": "x"}, {"n": 1}], out=tmp_path / "o.jsonl",
                               store=tmp_path / "st", nats=nats_server.url, log_level="warning")
    err = capsys.readouterr().err
    assert "WARNING source.bad_row error=" in err
    assert " INFO " not in err
    assert [type(h) for h in logging.getLogger("matrix_p2p").handlers] == [logging.NullHandler]


async def test_submit_and_collect_around_serve(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    spec = make_spec(tmp_path, TWO_ROLES)
    url, store = nats_server.url, tmp_path / "st"
    async with matrix_p2p.serve(spec, nats=url) as served, asyncio.timeout(90):
        sub = await matrix_p2p.submit(spec, nats=url, source=ROWS, store=store)
        assert (sub.submitted, sub.already, len(sub.ids)) == (3, 0, 3)
        rows = await matrix_p2p.collect(spec, nats=url, ids=sub)
        assert sorted(r["id"] for r in rows) == sorted(sub.ids)
        assert all(r["status"] == "done" and r["dialogue"] for r in rows)
        assert sorted(str(r["input"]["q"]) for r in rows) == sorted(str(r["q"]) for r in ROWS)
        # other rows in the same workflow: their own ids, and only theirs come back
        other = await matrix_p2p.submit(spec, nats=url, source=[{"q": "four"}], store=store,
                                        limit=5)
        assert not other.ids & sub.ids
        got = [row async for row in matrix_p2p.results(spec, nats=url, ids=other)]
        assert [r["input"] for r in got] == [{"q": "four"}]
        # submitting again creates nothing; `expect` counts any tasks of the stream
        assert (await matrix_p2p.submit(spec, nats=url, source=ROWS, store=store)).already == 3
        assert len(await matrix_p2p.collect(spec, nats=url, expect=4)) == 4
        async with matrix_p2p.results(spec, nats=url) as every:  # follows until closed
            first = await anext(every)
        assert first["id"] in sub.ids | other.ids
    assert served.stats.hops >= 8


async def test_a_retried_submission_collects_the_new_attempt(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    spec = make_spec(tmp_path, FLAKY)
    url, store = nats_server.url, tmp_path / "st"
    source = [{"behaviour": "fail_first_attempt"}, {"behaviour": "ok"}]
    async with matrix_p2p.serve(spec, nats=url), asyncio.timeout(90):
        sub = await matrix_p2p.submit(spec, nats=url, source=source, store=store)
        first = await matrix_p2p.collect(spec, nats=url, ids=sub)
        assert sorted(r["status"] for r in first) == ["done", "failed"]
        again = await matrix_p2p.submit(spec, nats=url, source=source, store=store,
                                        retry_failed=True)
        assert (again.retried, again.already) == (1, 2)
        (retried,) = [t for t in again.ids if t.endswith("~a2")]
        rows = await matrix_p2p.collect(spec, nats=url, ids=again)
    assert sorted((r["id"], r["status"]) for r in rows) == sorted(
        [(retried, "done"), (next(iter(again.ids - {retried})), "done")])
