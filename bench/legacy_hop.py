"""The hop's previous bus path, for side-by-side measurements only (``bench.runtime``).

Before issue 19 the worker published with nats-py's ``js.publish`` (a request per
message) and fetched with nats-py's ``fetch`` (a task, a timer and a uuid per
message; a lingering fetch of N keeps what came until N came or its timeout), and
ran each agent call under its own ``asyncio.timeout``. ``install()`` puts those
back on ``JetStreamBus`` and ``RoleWorker`` in this process; run as
``python -m bench.legacy_hop ARGS`` it is ``python -m matrix_p2p ARGS`` with them.
Never imported by the product.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from matrix_p2p.agent import Context
from matrix_p2p.aio import cancels_requested, honour_cancel
from matrix_p2p.bus.errors import TimedOut, translate
from matrix_p2p.bus.jetstream import JetStreamBus, JetStreamDelivery
from matrix_p2p.bus.types import Delivery
from matrix_p2p.envelope import Task
from matrix_p2p.errors import BusError, FailTask, RetryLater
from matrix_p2p.runtime.hop import AgentBug, AgentFailed, AgentOutcome, AgentRetry, Handled, classify
from matrix_p2p.runtime.worker import RoleWorker


class LegacyPuller:
    def __init__(self, sub: Any, stream: str, durable: str) -> None:
        self._sub = sub
        self.stream = stream
        self.durable = durable
        self._what = f"fetch from {stream}/{durable}"

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:
        cancels = cancels_requested()
        try:
            with translate(self._what):
                msgs = await self._sub.fetch(batch=batch, timeout=timeout)
        except TimedOut:
            msgs = []
        honour_cancel(cancels)
        return [JetStreamDelivery(m) for m in msgs if m.data is not None]

    async def unsubscribe(self) -> None:
        try:
            with translate(f"unsubscribe from {self.stream}/{self.durable}"):
                await self._sub.unsubscribe()
        except BusError:
            pass


async def _puller(self: JetStreamBus, stream: str, durable: str) -> LegacyPuller:
    with translate(f"bind to consumer {durable} on {stream}"):
        sub = await self.js.pull_subscribe_bind(
            durable=durable, stream=stream, pending_msgs_limit=-1, pending_bytes_limit=-1)
    return LegacyPuller(sub, stream, durable)


async def _publish(self: JetStreamBus, subject: str, data: bytes, *, msg_id: str | None = None,
                   headers: dict[str, str] | None = None, timeout: float = 10.0) -> bool:
    hdrs = dict(headers) if headers else {}
    if msg_id is not None:
        hdrs["Nats-Msg-Id"] = msg_id
    with translate(f"publish to {subject}", size=len(data), limit=self.max_payload):
        ack = await self.js.publish(subject, data, timeout=timeout, headers=hdrs or None)
    return bool(ack.duplicate)


async def _run_agent(self: RoleWorker, task: Task, spawned: list[dict[str, Any]]) -> AgentOutcome:
    ctx = Context(
        task=task, role=self.role, spec=self.spec, llm=self.llm, resource=self.resource,
        log=self.log, now=self.clock(), resources=self.resources, children=spawned,
        seen=self.seen,
    )
    try:
        async with asyncio.timeout(self.role.hop_timeout_s):
            await self.agent.handle(task, ctx)
        ctx.finish()
    except RetryLater as r:
        return AgentRetry(reason=r.reason, after_s=r.after_s)
    except FailTask as f:
        ctx.finish()
        return AgentFailed(reason=f.reason)
    except TimeoutError:
        return AgentRetry(reason=f"role {self.role.name!r} timed out after {self.role.hop_timeout_s}s")
    except Exception as exc:
        outcome = classify(exc, self.role.name)
        if isinstance(outcome, AgentBug):
            self.log.exception("agent.bug", task=task.id, reason=outcome.reason)
            ctx.finish()
        else:
            self.log.warning("agent.crashed", task=task.id, reason=outcome.reason)
        return outcome
    return Handled()


SAVED = (JetStreamBus.puller, JetStreamBus.publish, RoleWorker._run_agent)


def install() -> None:
    """Put the previous publish, fetch and hop timeout back (this process only)."""
    JetStreamBus.puller = _puller  # type: ignore[method-assign,assignment]
    JetStreamBus.publish = _publish  # type: ignore[method-assign]
    RoleWorker._run_agent = _run_agent  # type: ignore[method-assign]


def uninstall() -> None:
    """The current path again."""
    JetStreamBus.puller, JetStreamBus.publish, RoleWorker._run_agent = SAVED  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    from matrix_p2p.cli import main

    sys.argv[0] = "matrix_p2p"
    sys.exit(main())
