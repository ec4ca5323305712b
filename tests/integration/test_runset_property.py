"""Issue 17: a run is a set of tasks, as a stateful property against a real nats-server.

Random sequences of runs of one workflow on one store (two sources, limits,
interrupts, ``--retry-failed``, ``--new-version``, a broken then fixed agent,
deleted outputs, two output files) against a model of what each output must
hold: after a run that was not interrupted, its output holds exactly the run's
tasks (the selected rows of its source, in its code version), each once, with
the status the model allows; the counts and the exit-status input agree with
the file. Before the fix: a second source's run exited at once with the first
source's rows, a smaller --limit wrote the larger run's rows, an interrupted
--retry-failed was "finished" while its attempts were in flight.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.bus import ConnectOptions
from matrix_p2p.runtime.local_run import RunOptions, RunResult, run_workflow
from matrix_p2p.runtime.rows import with_source
from matrix_p2p.runtime.source import task_id
from matrix_p2p.workflow.spec import WorkflowSpec
from matrix_p2p.workflow.version import code_hash
from tests import runset_agents
from tests.conftest import make_spec, write_rows

YAML = """
source: {path: a.jsonl, id_field: id}
roles:
  a: {agent: "tests.runset_agents:Switchable", llm: null, concurrency: 50}
routing: {type: cycle, roles: [a], stop_when: agreed, max_turns: 3}
limits: {ack_wait_s: 5, retry_backoff_s: 0.05}
"""
SOURCES = {
    "a": [{"id": f"a{i}", "bad": i in (1, 3)} for i in range(5)],
    "b": [{"id": f"b{i}", "bad": i == 0} for i in range(4)],
}


def _run(spec: WorkflowSpec, opts: RunOptions, interrupt_after: int | None) -> RunResult:
    async def main() -> RunResult:
        stop = asyncio.Event()
        if interrupt_after is not None:
            runset_agents.INTERRUPT[spec.name] = (interrupt_after, stop)
        try:
            async with asyncio.timeout(30):  # a hang is a failure, not a wait
                return await run_workflow(spec, opts, stop)
        finally:
            runset_agents.INTERRUPT.pop(spec.name, None)

    return asyncio.run(main())


class Runs(RuleBasedStateMachine):
    url = ""

    @initialize()
    def setup(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mx-runset-"))
        for name, rows in SOURCES.items():
            write_rows(self.dir / f"{name}.jsonl", rows)
        self.spec = make_spec(self.dir, YAML)
        self.digest = code_hash(self.spec)
        self.ns = ""  # the store's code-version namespace once --new-version was used
        self.status: dict[str, str] = {}  # task id -> "done" | "failed" | "unknown"
        self.bad = {task_id(r["id"], 0): bool(r["bad"]) for rows in SOURCES.values() for r in rows}
        runset_agents.BROKEN.add(self.spec.name)

    def teardown(self) -> None:
        if hasattr(self, "spec"):
            runset_agents.BROKEN.discard(self.spec.name)
            shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def broken(self) -> bool:
        return self.spec.name in runset_agents.BROKEN

    @rule(source=st.sampled_from(["a", "b"]), limit=st.sampled_from([None, 1, 3]),
          out=st.sampled_from(["o1.jsonl", "o2.jsonl"]), retry=st.booleans(),
          new_version=st.sampled_from([False, False, False, True]),
          interrupt_after=st.sampled_from([None, None, 1, 2]))
    def run(self, source: str, limit: int | None, out: str, retry: bool, new_version: bool,
            interrupt_after: int | None) -> None:
        spec = with_source(self.spec, str(self.dir / f"{source}.jsonl"))
        opts = RunOptions(limit=limit, out=str(self.dir / out),
                          nats=ConnectOptions(url=self.url, name="runset-test"),
                          progress=False, fleet_state=False, retry_failed=retry,
                          version_mode="new" if new_version else "check", drain_timeout_s=10)
        result = _run(spec, opts, interrupt_after)
        if new_version:
            self.ns = self.digest[:8]
        suffix = f"~v{self.ns}" if self.ns else ""
        rows = SOURCES[source][:limit]
        wanted = [task_id(r["id"], 0) + suffix for r in rows]
        lines = [json.loads(ln) for ln in (self.dir / out).read_text().splitlines()] \
            if (self.dir / out).exists() else []
        ids = [ln["id"].split("~a")[0] for ln in lines]
        assert len(ids) == len(set(ids)), f"a task twice in {out}: {sorted(ids)}"
        assert set(ids) <= set(wanted), f"{out} holds other runs' tasks: {set(ids) - set(wanted)}"
        assert result.rows == len(lines)
        assert result.dataset_failed == sum(ln["status"] == "failed" for ln in lines)
        for tid in wanted:  # what this run did to the model's statuses
            plain = tid.removesuffix(suffix)
            before = self.status.get(tid)
            if before is None:
                now = "unknown" if result.interrupted else \
                    ("failed" if self.bad[plain] and self.broken else "done")
            elif retry and before != "done":
                now = "failed" if self.broken else "done"
                if self.broken and before == "unknown":
                    now = "unknown"
            else:
                now = before
            self.status[tid] = now
        if result.interrupted:
            for tid in wanted:
                if self.status[tid] == "failed" and retry:
                    self.status[tid] = "unknown"  # its retry may not have run yet
            return
        assert sorted(ids) == sorted(wanted), f"{out}: {sorted(ids)} != {sorted(wanted)}"
        for ln in lines:
            tid = ln["id"].split("~a")[0]
            expect = self.status[tid]
            assert expect in ("unknown", ln["status"]), (tid, expect, ln["status"], ln["error"])
            self.status[tid] = ln["status"]  # a finished task's status is final until a retry

    @rule()
    def fix(self) -> None:
        runset_agents.BROKEN.discard(self.spec.name)

    @rule()
    def delete_output(self) -> None:
        for name in ("o1.jsonl", "o2.jsonl"):
            (self.dir / name).unlink(missing_ok=True)

    @invariant()
    def no_stray_files(self) -> None:
        if hasattr(self, "dir"):
            stray = [p.name for p in self.dir.iterdir() if p.name.endswith(".tmp")]
            assert not stray, stray


def _check(url: str, examples: int, steps: int) -> None:
    Runs.url = url
    case = Runs.TestCase
    case.settings = settings(max_examples=examples, stateful_step_count=steps, deadline=None,
                             derandomize=True, database=None,
                             # no shrinking: a hanging run would be retried for minutes
                             phases=[Phase.explicit, Phase.generate],
                             suppress_health_check=list(HealthCheck))
    case().runTest()


def test_every_run_writes_exactly_its_own_tasks(nats_server: EmbeddedNats) -> None:
    _check(nats_server.url, examples=int(os.environ.get("MX_RUNSET_EXAMPLES", 6)), steps=6)


@pytest.mark.slow
def test_every_run_writes_exactly_its_own_tasks_many(nats_server: EmbeddedNats) -> None:
    _check(nats_server.url, examples=60, steps=10)
