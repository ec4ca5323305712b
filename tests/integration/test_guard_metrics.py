"""Guards of the counts and the permissions (``make mutate`` breaks each):

- ``metrics_count_the_rows_of_the_file``: the sink's rows-written counter equals the rows
  in its file, also with ``--kept-only`` (a dropped task is finished, not a row) and
  when a result arrives twice (counted once);
- ``source_may_read_the_results`` / ``source_user_can_retry_failed``: the source's NATS
  user may read the results stream back, which ``--retry-failed`` does; on a real
  nats-server with the generated users, a source runs ``retry_failed`` as itself.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from matrix_p2p import envelope
from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.bus import ConnectOptions, MemoryBus, connect
from matrix_p2p.metrics import Metrics
from matrix_p2p.permissions import all_users, nats_config, passwords_for, workflow_users
from matrix_p2p.runtime.attempts import retry_failed
from matrix_p2p.runtime.sink import Sink
from matrix_p2p.runtime.topology import Names, ensure_workflow
from matrix_p2p.workflow.spec import WorkflowSpec
from tests.conftest import make_spec
from tests.fault_rig import TWO_ROLES
from tests.integration.helpers import read_rows
from tests.integration.test_edge_faults import result, running_sink


def counted(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(m.render().decode()) for s in f.samples}


def filtered(spec: WorkflowSpec, tid: str, kept: bool) -> bytes:
    t = result(spec, tid)
    t.state["kept"] = kept
    return envelope.encode(t)


async def test_guard_metrics_count_the_rows_of_the_file(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, TWO_ROLES, [])
    bus = MemoryBus()
    names = await ensure_workflow(bus, spec)
    m = Metrics()
    out = tmp_path / "out.jsonl"
    async with asyncio.timeout(5), running_sink(Sink(bus, spec, out, kept_only=True, metrics=m),
                                                expect=4):
        for data in (filtered(spec, "k1", True), filtered(spec, "k2", True),
                     filtered(spec, "k1", True),  # the same result again
                     filtered(spec, "d1", False)):  # dropped by a filter: no row
            await bus.publish(names.done, data)
        await bus.publish(names.failed, envelope.encode(result(spec, "f1", "failed")))
    await bus.close()
    rows = read_rows(out)
    assert sorted(r["id"] for r in rows) == ["k1", "k2"]
    c = counted(m)
    assert c[("matrix_p2p_sink_rows_written_total", ())] == len(rows)
    assert c[("matrix_p2p_tasks_finished_total", (("status", "done"),))] == 3  # k1, k2, d1
    assert c[("matrix_p2p_tasks_finished_total", (("status", "failed"),))] == 1


CYCLE = """
roles:
  a: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
  b: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
routing: {type: cycle, roles: [a, b], max_turns: 2}
"""


def test_guard_source_may_read_the_results(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, CYCLE, [])
    res = Names.of(spec).results_stream
    [source] = [u for u in workflow_users(spec) if u.name == f"{spec.name}.source"]
    # iter_stream: the stream's bounds, then its messages by sequence
    assert {f"$JS.API.STREAM.INFO.{res}", f"$JS.API.STREAM.MSG.GET.{res}"} <= set(source.publish)


class AuthNats(EmbeddedNats):
    """The embedded broker with the generated accounts block in its config."""

    def __init__(self, accounts: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.accounts = accounts

    def config_text(self) -> str:
        return super().config_text() + self.accounts


async def test_guard_source_user_can_retry_failed(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, CYCLE, [])
    names = Names.of(spec)
    users = all_users([spec])
    passwords = passwords_for(users, {})
    with AuthNats(nats_config(users, passwords), store_dir=tmp_path / "nats", sync="interval") as srv:
        def as_user(user: str) -> ConnectOptions:
            return ConnectOptions(url=srv.url, user=user, password=passwords[user], name=user)

        admin = await connect(as_user("admin"))
        source = await connect(as_user(f"{spec.name}.source"))
        try:
            async with asyncio.timeout(30):
                await ensure_workflow(admin, spec)
                await admin.publish(names.failed, envelope.encode(result(spec, "x", "failed")))
                assert await retry_failed(source, spec, namespace="") == ["x~a2"]
        finally:
            await source.close()
            await admin.close()
