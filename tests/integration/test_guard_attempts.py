"""Guards of code versions, attempts and the exit status (``make mutate`` breaks each):

- ``code_version_covers_agents_and_router``: a change to the source of an agent's or the
  router's module changes the code version (so ``run`` asks for ``--new-version`` or
  ``--reuse`` instead of mixing rows of two codes);
- ``retry_failed_resubmits_the_latest_failed_attempts``: ``--retry-failed`` resubmits
  each task whose *latest* attempt failed (by attempt number, not by stream order), as
  the attempt after it; not done tasks, not bad input rows, not another code version's
  tasks, and not twice;
- ``output_keeps_the_latest_attempt``: a rebuilt output and a live sink keep the latest
  attempt of each task, whatever order the stream holds them in;
- ``exit_status_from_the_output`` / ``run_reports_failures_already_in_the_output``:
  ``run`` exits 1 while the output holds a failed row, also when this run failed
  nothing, and 0 when this run's failures were superseded by a later attempt.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path

import pytest

from matrix_p2p import envelope
from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.bus import ConnectOptions, MemoryBus
from matrix_p2p.cli import main
from matrix_p2p.envelope import Task
from matrix_p2p.runtime import local_run
from matrix_p2p.runtime.attempts import retry_failed, split_attempt
from matrix_p2p.runtime.local_run import RunOptions, RunResult, run_workflow
from matrix_p2p.runtime.sink import Sink
from matrix_p2p.runtime.source import SubmitResult
from matrix_p2p.runtime.topology import Names, ensure_workflow
from matrix_p2p.runtime.worker import WorkerStats
from matrix_p2p.workflow.spec import WorkflowSpec
from matrix_p2p.workflow.version import code_hash
from tests.conftest import make_spec
from tests.fault_rig import TWO_ROLES, stored
from tests.integration.helpers import read_rows
from tests.integration.test_edge_faults import result, running_sink

_mods = itertools.count()

ROUTER = """
from matrix_p2p.runtime.routing import Done, Forward


class R:
    def entry(self, spec):
        return "a"

    def route(self, task, spec):
        return Done() if task.hop >= 1 else Forward("a")
"""
AGENT = """
from matrix_p2p_agents.dummy import Talker


class A(Talker):
    pass
"""


def test_guard_code_version_covers_agents_and_router(tmp_path: Path) -> None:
    mod = f"guard_code_{os.getpid()}_{next(_mods)}"
    agent, router = tmp_path / f"{mod}_agent.py", tmp_path / f"{mod}_router.py"
    agent.write_text(AGENT)
    router.write_text(ROUTER)
    spec = make_spec(tmp_path, f"roles: {{a: {{agent: '{mod}_agent:A', llm: null}}}}\n"
                               f"routing: {{type: python, router: '{mod}_router:R'}}\n")
    first = code_hash(spec)
    assert code_hash(spec) == first
    router.write_text(ROUTER + "# the router changed\n")
    by_router = code_hash(spec)
    assert by_router != first, "the router's code is not in the code version"
    agent.write_text(AGENT + "# the agent changed\n")
    assert code_hash(spec) != by_router, "the agent's code is not in the code version"


def ended(spec: WorkflowSpec, tid: str, status: str = "done", error: str = "it failed") -> Task:
    """The result of attempt ``tid`` (``x``, ``x~a2``...): every attempt has x's row."""
    t = result(spec, tid, status)
    t.row = {"id": split_attempt(tid)[0]}
    if status == "failed":
        t.error = error
    return t


def failed(spec: WorkflowSpec, tid: str, error: str = "it failed") -> Task:
    return ended(spec, tid, "failed", error)


async def publish_results(bus: MemoryBus, names: Names, results: list[Task]) -> None:
    for t in results:
        await bus.publish(names.done if t.status == "done" else names.failed, envelope.encode(t))


async def test_guard_retry_failed_resubmits_the_latest_failed_attempts(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, TWO_ROLES, [])
    bus = MemoryBus()
    names = await ensure_workflow(bus, spec)
    await publish_results(bus, names, [
        failed(spec, "a"),
        ended(spec, "b"),  # done: nothing to retry
        failed(spec, "c", "bad input row: rows.jsonl:3: not valid JSON"),  # would fail again
        failed(spec, "d~a2"), failed(spec, "d"),  # attempt 1's result stored after attempt 2's
        failed(spec, "e"), ended(spec, "e~a2"),  # the retry succeeded
        failed(spec, "g~v0123abcd"),  # another code version's task
    ])
    assert sorted(await retry_failed(bus, spec, namespace="")) == ["a~a2", "d~a3"]
    entered = {t.id: t for t in await stored(bus, names.tasks_stream)}
    assert sorted(entered) == ["a~a2", "d~a3"]
    assert all(t.hop == 0 and t.role == "a" and t.turns == [] for t in entered.values())
    assert entered["d~a3"].row == {"id": "d"}
    # recorded: never published twice; still in flight, so a re-run waits for them
    assert sorted(await retry_failed(bus, spec, namespace="")) == ["a~a2", "d~a3"]
    assert sorted(t.id for t in await stored(bus, names.tasks_stream)) == ["a~a2", "d~a3"]
    await bus.close()


async def test_guard_output_keeps_the_latest_attempt(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, TWO_ROLES, [])
    bus = MemoryBus()
    names = await ensure_workflow(bus, spec)
    out = tmp_path / "out.jsonl"
    # already stored when the sink starts: its output is rebuilt from the stream
    await publish_results(bus, names, [result(spec, "d~a2"), failed(spec, "d"), result(spec, "x")])
    async with asyncio.timeout(5), running_sink(Sink(bus, spec, out), expect=3):
        # and these arrive while it runs
        await publish_results(bus, names, [result(spec, "e~a3"), failed(spec, "e~a2")])
    rows = {r["id"]: r["status"] for r in read_rows(out)}
    assert rows == {"d~a2": "done", "x": "done", "e~a3": "done"}
    await bus.close()


def _result(tmp_path: Path, *, failed: int, dataset_failed: int) -> RunResult:
    return RunResult(out=str(tmp_path / "out.jsonl"), rows=3, expected=3, done=3 - failed,
                     failed=failed, elapsed_s=1.0, completion_tokens=0, interrupted=False,
                     submit=SubmitResult(), worker=WorkerStats(),
                     dataset_done=3 - dataset_failed, dataset_failed=dataset_failed)


@pytest.mark.parametrize(("failed", "dataset_failed", "flags", "status"), [
    (0, 1, [], 1),  # an earlier run's failure is still in the output
    (1, 0, [], 0),  # this run's failed attempt was superseded by a later one
    (1, 1, [], 1),
    (0, 1, ["--accept-failures"], 0),
])
def test_guard_exit_status_from_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           failed: int, dataset_failed: int, flags: list[str],
                                           status: int) -> None:
    spec = make_spec(tmp_path, TWO_ROLES, [{"n": 1}])
    finished = _result(tmp_path, failed=failed, dataset_failed=dataset_failed)

    async def run_workflow(spec: WorkflowSpec, opts: RunOptions, stop: asyncio.Event) -> RunResult:
        return finished

    monkeypatch.setattr(local_run, "run_workflow", run_workflow)
    assert main(["run", spec.path, "--no-progress", "--out", finished.out, *flags]) == status


FLAKY = """
source: {path: rows.jsonl, id_field: id}
roles: {only: {agent: "matrix_p2p_agents.dummy:Flaky", llm: null}}
routing: {type: cycle, roles: [only], stop_when: agreed, max_turns: 3}
limits: {ack_wait_s: 5, retry_backoff_s: 0.02, max_deliveries: 2}
"""


async def test_guard_run_reports_failures_already_in_the_output(
        tmp_path: Path, nats_server: EmbeddedNats) -> None:
    spec = make_spec(tmp_path, FLAKY, [{"id": "ok", "behaviour": "ok"},
                                       {"id": "bad", "behaviour": "fail"}])
    opts = RunOptions(nats=ConnectOptions(url=nats_server.url, name="guard-exit"),
                      out=str(tmp_path / "out.jsonl"), progress=False)
    async with asyncio.timeout(30):
        first = await run_workflow(spec, opts, asyncio.Event())
        again = await run_workflow(spec, opts, asyncio.Event())  # nothing new to do
    assert (first.failed, first.dataset_failed) == (1, 1)
    assert (again.failed, again.dataset_done, again.dataset_failed) == (0, 1, 1)
