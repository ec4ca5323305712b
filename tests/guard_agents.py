"""Agents and a resource kind for the guard tests (``tests/*/test_guard_*.py``): in process,
no LLM, each doing one thing the guard under test decides about."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict

from matrix_p2p.agent import Agent, Context
from matrix_p2p.envelope import Lease, Task
from matrix_p2p.errors import RetryLater


class RecordingKind:
    """A resource kind whose every lease has its own ref, recording what it was asked."""

    renew_margin_s = 10.0

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.acquired: list[str] = []
        self.released: list[str] = []
        self._n = itertools.count(1)

    async def acquire(self, task_id: str) -> Lease:
        ref = f"{self.prefix}-{task_id}-{next(self._n)}"
        self.acquired.append(ref)
        return Lease(kind="?", ref=ref, expires_at=None, where="here")

    async def renew(self, lease: Lease) -> Lease:
        return lease

    async def release(self, lease: Lease) -> None:
        self.released.append(lease.ref)


# task id -> the ``box`` lease each delivery of role ``b`` found, in order
BOX_SEEN: dict[str, list[str]] = defaultdict(list)


class BoxThenScratch(Agent):
    """Role ``a``: takes a ``box`` lease and forwards (the lease rides in the envelope).
    Role ``b``: uses the held ``box``, takes a ``scratch`` lease for this attempt only,
    and asks to be retried on its first delivery; on the next one it agrees."""

    async def handle(self, task: Task, ctx: Context) -> None:
        box = await ctx.resources.lease(task, "box")
        ctx.say("turn")
        if ctx.role.name == "a":
            return
        BOX_SEEN[task.id].append(box.ref)
        await ctx.resources.lease(task, "scratch")
        if len(BOX_SEEN[task.id]) == 1:
            raise RetryLater("once more", after_s=0.0)
        task.state["agreed"] = True


class Grow(Agent):
    """Leaves a new big value in ``state`` at every hop (the hop's offload puts it)."""

    async def handle(self, task: Task, ctx: Context) -> None:
        task.state[f"notes{task.hop}"] = str(task.hop) * 5000
        ctx.say("grown")


class Split(Agent):
    """Fans out ``options.children`` children (the same ones on every delivery)."""

    async def handle(self, task: Task, ctx: Context) -> None:
        ctx.say("split")
        for i in range(int(ctx.role.options.get("children", 3))):
            ctx.spawn(state={"part": i})


# workflow name -> the gate its ``Held`` agents wait at, and who is inside
HELD: dict[str, tuple[asyncio.Event, list[str]]] = {}


def hold(workflow: str) -> tuple[asyncio.Event, list[str]]:
    """Hold every ``Held`` hop of ``workflow`` until the returned event is set."""
    HELD[workflow] = (asyncio.Event(), [])
    return HELD[workflow]


class Held(Agent):
    """Says a turn; first waits at its workflow's gate (``hold``), if it has one."""

    async def handle(self, task: Task, ctx: Context) -> None:
        held = HELD.get(task.workflow)
        if held is not None:
            gate, inside = held
            inside.append(task.id)
            await gate.wait()
        ctx.say("answer")
