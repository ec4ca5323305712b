"""Guards of resource leases on the worker and client side (``make mutate`` breaks each):

- ``retried_hop_releases_only_its_own_leases``: a hop handed back (nak) releases the
  leases taken during that attempt (the envelope as it arrived does not hold them), and
  keeps the ones the task arrived with (the next delivery uses them);
- ``sandbox_lease_renewed_before_expiry``: a sandbox lease with less than half its TTL
  left is renewed when the task next uses it, one with more is not.

The service side (reclaim, ``Retry-After``, the client's breaker) is in
``tests/integration/test_guard_sandbox.py``.
"""

from __future__ import annotations

from pathlib import Path

from matrix_p2p.bus import MemoryBus
from matrix_p2p.envelope import Lease, Task
from matrix_p2p.resources.base import Resources
from matrix_p2p.resources.sandbox import SandboxPool
from matrix_p2p.sandbox.client import Lease as ServerLease
from matrix_p2p.workflow.spec import SandboxResource
from tests.conftest import make_spec
from tests.guard_agents import BOX_SEEN, RecordingKind
from tests.integration.helpers import read_rows, run_until

LEASES = """
source: {path: rows.jsonl, id_field: id}
roles:
  a: {agent: "tests.guard_agents:BoxThenScratch", llm: null, resources: [box]}
  b: {agent: "tests.guard_agents:BoxThenScratch", llm: null, resources: [box, scratch]}
routing: {type: cycle, roles: [a, b], stop_when: agreed, max_turns: 10}
resources: {sandbox: {box: {}, scratch: {}}}
limits: {ack_wait_s: 5, retry_backoff_s: 0.01, max_deliveries: 3}
"""


async def test_guard_retried_hop_releases_only_its_own_leases(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, LEASES, [{"id": "leased"}])
    box, scratch = RecordingKind("box"), RecordingKind("scratch")
    bus = MemoryBus()
    try:
        await run_until(bus, spec, tmp_path / "out.jsonl", expect=1, deadline_s=10,
                        resources=Resources({"box": box, "scratch": scratch}))
    finally:
        await bus.close()
    [row] = read_rows(tmp_path / "out.jsonl")
    assert row["status"] == "done", row["error"]
    # role b ran twice (a retry, then done), both times on the box the task arrived with
    assert len(box.acquired) == 1 and BOX_SEEN[row["id"]] == box.acquired * 2
    assert box.released == box.acquired, "the held box was released by the retry, or never"
    # one scratch per attempt: the retried attempt's given back at once, the last at the end
    assert len(scratch.acquired) == 2
    assert scratch.released == scratch.acquired, "the retried attempt's lease was kept"


class _Server:
    """The one call of a sandbox server that renewing needs."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.renewed: list[tuple[str, float | None]] = []

    async def renew(self, lease: str, ttl_s: float | None = None) -> ServerLease:
        self.renewed.append((lease, ttl_s))
        return ServerLease(id=lease, endpoint="http://a", expires_at=self.clock[0] + 60.0)


async def test_guard_sandbox_lease_renewed_before_expiry() -> None:
    now = [1000.0]
    pool = SandboxPool("box", ["http://a"], SandboxResource(ttl_s=60.0))
    server = _Server(now)
    pool.clients["http://a"] = server  # type: ignore[assignment]
    resources = Resources({"box": pool}, clock=lambda: now[0])
    held = Lease(kind="box", ref="L1", expires_at=now[0] + 60.0, where="http://a")
    task = Task(id="t", workflow="w", role="a", leases=[held])
    now[0] += 25.0  # 35 s of 60 left: more than half, used as it is
    assert await resources.lease(task, "box") is held and server.renewed == []
    now[0] += 10.0  # 25 s left: renewed now, while the server still holds it
    renewed = await resources.lease(task, "box")
    assert server.renewed == [("L1", 60.0)]
    assert renewed.expires_at == now[0] + 60.0 and task.leases == [renewed]
