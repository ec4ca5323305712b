"""The fleet's seen-set: first claim of a key wins, across every worker process.

Backed by the workflow's ``SEEN`` key-value bucket (``Names.seen_bucket``):
``claim(key, task_id)`` creates the key with the task's id unless it exists,
and returns the id that owns it. A redelivered task finds its own claim, so
it is never taken for a duplicate of itself; two workers racing on one key
both get the one owner the broker let create it. Agents get it as
``ctx.seen`` (exact dedup of documents, for example).
"""

from __future__ import annotations

import asyncio

from matrix_p2p.bus import Bus, KeyValue
from matrix_p2p.errors import BusError
from matrix_p2p.runtime.topology import Names
from matrix_p2p.workflow.spec import WorkflowSpec


class KVSeenSet:
    """``agent.SeenSet`` over JetStream KV (the bucket is opened on the first claim)."""

    def __init__(self, bus: Bus, spec: WorkflowSpec) -> None:
        self.bus = bus
        self.bucket = Names.of(spec).seen_bucket
        self._kv: KeyValue | None = None
        self._opening = asyncio.Lock()

    async def claim(self, key: str, task_id: str) -> str:
        """Record ``task_id`` as the owner of ``key`` unless one exists; return the owner.

        Error handling: bus errors propagate (the agent's hop is retried)."""
        if self._kv is None:
            async with self._opening:
                if self._kv is None:
                    self._kv = await self.bus.key_value(self.bucket)
        if await self._kv.create(key, task_id.encode()):
            return task_id
        owner = await self._kv.get(key)
        if owner is None:  # deleted between the two calls (an operator purge): claim again
            raise BusError(f"seen-set {self.bucket}/{key}: claimed, then gone; retry")
        return owner.decode()
