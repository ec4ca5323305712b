"""Agents for the lease-release tests: take a lease, then end as the row says."""

from __future__ import annotations

from matrix_p2p.agent import Agent, Context
from matrix_p2p.envelope import Lease, Task
from matrix_p2p.errors import FailTask, RetryLater


class FakeKind:
    """A resource kind that records what it was asked to do."""

    renew_margin_s = 10.0

    def __init__(self) -> None:
        self.acquired: list[str] = []
        self.released: list[str] = []
        self.renewed: list[str] = []
        self.expires_in = 100.0
        self.now = 1000.0

    async def acquire(self, task_id: str) -> Lease:
        self.acquired.append(task_id)
        return Lease(kind="?", ref=f"L-{task_id}", expires_at=self.now + self.expires_in, where="x")

    async def renew(self, lease: Lease) -> Lease:
        self.renewed.append(lease.ref)
        return Lease(kind=lease.kind, ref=lease.ref, expires_at=self.now + 100.0, where=lease.where)

    async def release(self, lease: Lease) -> None:
        self.released.append(lease.ref)


class TakeLease(Agent):
    async def handle(self, task: Task, ctx: Context) -> None:
        await ctx.resources.lease(task, "box")
        behaviour = task.row.get("behaviour", "done")
        if behaviour == "fail":
            raise FailTask("row asked to fail")
        if behaviour == "retry_always":
            raise RetryLater("row asked to retry", after_s=0.01)
        if behaviour == "crash":
            raise RuntimeError("row asked to crash")
        if behaviour == "forward" and not task.state.get("again"):
            task.state["again"] = True
            return
        task.state["agreed"] = True
