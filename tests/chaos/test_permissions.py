"""Per-role NATS users on a real nats-server: a judge consumes its own tasks and forwards where
its routing goes, and nothing else; a whole workflow runs with one user per process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from matrix_p2p import envelope
from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.bus import Bus, ConnectOptions, connect
from matrix_p2p.envelope import Task
from matrix_p2p.errors import BusError
from matrix_p2p.permissions import all_users, nats_config, passwords_for
from matrix_p2p.runtime.topology import Names, ensure_workflow
from matrix_p2p.workflow import loader as specmod
from matrix_p2p.workflow.spec import WorkflowSpec
from tests.chaos.harness import (
    Proc,
    check_exactly_once,
    child_env,
    expected_ids,
    mx,
    processes,
    status_json,
    wait_for,
    write_workflow,
)
from tests.conftest import make_spec

pytestmark = pytest.mark.chaos

# judge forwards to student, never to teacher: the routing makes the teacher's subject off limits
CYCLE = """
roles:
  teacher: {agent: "matrix_p2p_agents.dummy:Talker", llm: null, concurrency: 20}
  judge:   {agent: "matrix_p2p_agents.dummy:Decider", llm: null, concurrency: 20, options: {p_stop: 0.5}}
  student: {agent: "matrix_p2p_agents.dummy:Talker", llm: null, concurrency: 20}
routing: {type: cycle, roles: [teacher, judge, student], stop_when: agreed, max_turns: 9}
limits: {ack_wait_s: 5, retry_backoff_s: 0.05}
"""


class AuthNats(EmbeddedNats):
    """The embedded broker with the generated accounts block appended to its config."""

    def __init__(self, accounts: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.accounts = accounts

    def config_text(self) -> str:
        return super().config_text() + self.accounts


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[AuthNats, WorkflowSpec, WorkflowSpec, dict[str, str]]]:
    mine = make_spec(tmp_path, CYCLE, name="permsa")
    other = make_spec(tmp_path, CYCLE, name="permsb")
    users = all_users([mine, other])
    passwords = passwords_for(users, {})
    server = AuthNats(nats_config(users, passwords), store_dir=tmp_path / "nats", sync="interval")
    with server:
        yield server, mine, other, passwords


async def as_user(server: EmbeddedNats, passwords: dict[str, str], user: str) -> Bus:
    return await connect(ConnectOptions(url=server.url, user=user, password=passwords[user],
                                        name=f"test-{user}"))


class Raw:
    """A plain nats-py connection whose async errors (permission violations) land in a queue."""

    def __init__(self) -> None:
        self.errors: asyncio.Queue[str] = asyncio.Queue()
        self.nc: Any = None

    async def open(self, url: str, user: str, password: str) -> Raw:
        async def error_cb(exc: Exception) -> None:
            self.errors.put_nowait(str(exc))

        self.nc = await nats.connect(url, user=user, password=password, error_cb=error_cb,
                                     allow_reconnect=False)
        return self

    async def refused(self, action: str, subject: str) -> None:
        """Wait for the server's violation for ``action`` on ``subject`` (flush: the -ERR came
        before the PONG, so it is already queued or on its way)."""
        await self.nc.flush()
        async with asyncio.timeout(5):
            err = await self.errors.get()
        # nats-py lower-cases the server's -ERR line
        assert f'permissions violation for {action} to "{subject}"'.lower() in err.lower(), err


@pytest.fixture
async def raw_judge(secured: tuple[AuthNats, WorkflowSpec, WorkflowSpec, dict[str, str]]
                    ) -> AsyncIterator[Raw]:
    server, mine, _, passwords = secured
    raw = await Raw().open(server.url, f"{mine.name}.role.judge", passwords[f"{mine.name}.role.judge"])
    yield raw
    await raw.nc.close()


def a_task(spec: WorkflowSpec, role: str) -> bytes:
    return envelope.encode(Task(id="t-1", workflow=spec.name, role=role, row={"n": 1}))


async def test_judge_consumes_its_tasks_and_forwards_only_where_routing_goes(
        secured: tuple[AuthNats, WorkflowSpec, WorkflowSpec, dict[str, str]], raw_judge: Raw) -> None:
    server, mine, other, passwords = secured
    n, o = Names.of(mine), Names.of(other)
    admin = await as_user(server, passwords, "admin")
    judge = await as_user(server, passwords, f"{mine.name}.role.judge")
    try:
        async with asyncio.timeout(60):
            await ensure_workflow(admin, other)
            # today's worker sets up its own stream and consumer on start: the judge may
            await ensure_workflow(judge, mine, ["judge"])
            await admin.publish(n.task("judge"), a_task(mine, "judge"), msg_id="t-1:0")
            await admin.publish(o.task("judge"), a_task(other, "judge"), msg_id="t-1:0")

            puller = await judge.puller(n.tasks_stream, "judge")
            [d] = await puller.fetch(1, timeout=5)
            await d.in_progress()
            assert envelope.decode(d.data).id == "t-1"
            assert not await judge.publish(n.task("student"), d.data, msg_id="t-1:1")  # next role
            assert not await judge.publish(n.done, d.data, msg_id="t-1:done")
            await d.ack_sync()

            # the teacher's subject: refused by the server (it drops the message and sends
            # -ERR, so the PubAck never comes), and nothing was stored
            with pytest.raises(BusError, match=rf"^publish to {n.task('teacher')} (failed: |timed out)"):
                await judge.publish(n.task("teacher"), d.data, timeout=1.0)
            await raw_judge.nc.publish(n.task("teacher"), b"x")
            await raw_judge.refused("publish", n.task("teacher"))
            counts = await admin.stream_counts(n.tasks_stream)
            assert counts == {n.task("student"): 1}, counts

            # nor a consumer of another role, nor one filtered on another role's subject
            nxt = f"$JS.API.CONSUMER.MSG.NEXT.{n.tasks_stream}.teacher"
            await raw_judge.nc.publish(nxt, b"1", reply="_INBOX.x")
            await raw_judge.refused("publish", nxt)
            create = f"$JS.API.CONSUMER.CREATE.{n.tasks_stream}.judge.{n.task('teacher')}"
            await raw_judge.nc.publish(create, b"{}", reply="_INBOX.x")
            await raw_judge.refused("publish", create)

            # the other workflow: its consumer, its stream, its messages, its subjects
            for subject in (f"$JS.API.CONSUMER.MSG.NEXT.{o.tasks_stream}.judge",
                            f"$JS.API.STREAM.INFO.{o.tasks_stream}",
                            f"$JS.API.STREAM.MSG.GET.{o.tasks_stream}",
                            f"$JS.API.DIRECT.GET.{o.tasks_stream}",
                            o.task("student")):
                await raw_judge.nc.publish(subject, b"{}", reply="_INBOX.x")
                await raw_judge.refused("publish", subject)
            await raw_judge.nc.subscribe(f"{o.task_prefix}.>")
            await raw_judge.refused("subscription", f"{o.task_prefix}.>")
            other_puller = await judge.puller(o.tasks_stream, "judge")
            assert await other_puller.fetch(1, timeout=1.0) == []
            stats = await admin.consumer_stats(o.tasks_stream, "judge")
            assert stats is not None and stats.pending == 1 and stats.ack_pending == 0  # untouched
    finally:
        await judge.close()
        await admin.close()


async def test_no_credentials_no_entry(
        secured: tuple[AuthNats, WorkflowSpec, WorkflowSpec, dict[str, str]]) -> None:
    server, mine, other, passwords = secured
    # one workflow's judge password does not open the other workflow's judge user
    with pytest.raises(BusError, match="authorization refused"):
        await connect(ConnectOptions(url=server.url, user=f"{other.name}.role.judge",
                                     password=passwords[f"{mine.name}.role.judge"]), connect_timeout=5)
    with pytest.raises(BusError, match="authorization refused"):
        await connect(ConnectOptions(url=server.url), connect_timeout=5)


def test_a_workflow_runs_with_one_user_per_process(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path, "permsrun", CYCLE, [{"n": i} for i in range(40)])
    spec = specmod.load(str(wf))
    users = all_users([spec])
    passwords = passwords_for(users, {})
    out = tmp_path / "out.jsonl"

    def env(user: str) -> dict[str, str]:
        return child_env(MX_NATS_USER=user, MX_NATS_PASSWORD=passwords[user])

    with AuthNats(nats_config(users, passwords), store_dir=tmp_path / "nats", sync="interval") as server:
        url_args = ["--nats", server.url]
        with processes() as ps:
            # the source first: it sets up the streams and every role's consumer
            sub = mx("submit", str(wf), *url_args, env=env("permsrun.source"))
            assert sub.returncode == 0, sub.stderr
            for role in spec.roles:
                # LLM-free roles get no fleet bucket, so they do not open it
                ps.append(Proc(["worker", str(wf), "--role", role, *url_args,
                                "--no-fleet-state"], tmp_path / f"{role}.log",
                               env=env(f"permsrun.role.{role}")))
            for p in ps:
                wait_for(lambda p=p: bool(p.events("worker.ready")), 60, "the workers to be ready")
            sink = mx("sink", str(wf), *url_args, "--out", str(out), "--expect", "40",
                      "--timeout", "90", env=env("permsrun.sink"), timeout=120)
            assert sink.returncode == 0, sink.stderr
            st = status_json(wf, server.url, env=env("admin"))
            logs = {p.log.name: p.text() for p in ps}
            assert all(p.stop() == 0 for p in ps)
        for name, text in [*logs.items(), ("source", sub.stderr), ("sink", sink.stderr)]:
            assert "permissions violation" not in text.lower(), (name, text[-2000:])
        check_exactly_once(out, expected_ids(wf), st)
        assert st["dead_letters"] == 0
