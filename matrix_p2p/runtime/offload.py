"""Large-payload offload: big row and state values travel in the object store.

A top-level value of ``task.row`` or ``task.state`` whose msgpack encoding is
larger than ``limits.offload_bytes`` is put into the workflow's object bucket
(``Names.objects_bucket``) and replaced in the envelope by a reference
``{"$mx_obj": name, "bytes": n}``. The worker resolves references on arrival,
before ``agent.handle``, and offloads again before the next hop is published,
so agents always see plain values; ``submit`` offloads the first envelope and
the sink resolves the last one.

Protocol (why it is exactly-once and leak-free):
- Names are content-addressed, ``<task id>/<blake2b of the bytes>``, and every
  name a task ever put is listed in ``task.objects``. A redelivered hop puts
  the same bytes under the same name, so an object in the store never changes
  its content, and whichever envelope won the msg-id dedup reads exactly the
  value its own hop wrote. A value the agent did not touch keeps its
  reference (no put at all).
- Objects are put before the envelope that names them is published, so a
  published reference always resolves.
- Workers keep recently read and written objects in a small cache (``CACHE_BYTES``
  per process): safe because an object's bytes never change, and it spares the
  next hop of the same task (often in the same process) a read.
- Only the sink deletes: after it has written the row and fsynced the file,
  and before it acks the result. A crash before the deletes redelivers the
  result; the row is a duplicate then (skipped), and the deletes run again
  (deleting a missing object is a no-op). The run's own sink and a standalone
  ``sink`` both do this; run one sink per workflow when values are offloaded
  (a second sink may find them gone and writes the reference, with an error).
- What is left: a hop killed between its puts and its publish, whose agent
  then produces different bytes on redelivery, orphans the first bytes (no
  envelope names them). The bucket's ``limits.offload_ttl_s`` expires those.
  Dead-lettered envelopes keep their objects (a replay needs them) until the
  same expiry.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from typing import Any

import msgspec

from matrix_p2p.bus import Bus, ObjectStore
from matrix_p2p.envelope import Task
from matrix_p2p.errors import MatrixError
from matrix_p2p.runtime.topology import Names
from matrix_p2p.workflow.spec import WorkflowSpec

REF = "$mx_obj"
CACHE_BYTES = 64 * 1024 * 1024
SECTIONS = ("row", "state")

_encoder = msgspec.msgpack.Encoder()


class MissingObject(MatrixError):
    """A reference names an object that is not in the store (expired, or deleted)."""


def is_ref(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 2 and REF in value and "bytes" in value


def refs(task: Task) -> list[tuple[str, str, str]]:
    """(section, key, object name) of every reference in the envelope."""
    return [(section, key, value[REF]) for section in SECTIONS
            for key, value in getattr(task, section).items() if is_ref(value)]


# (section, key) -> (the resolved value, its reference): unchanged values keep their reference
Resolved = dict[tuple[str, str], tuple[Any, dict[str, Any]]]


class Offloader:
    """Moves a workflow's big values to and from its object bucket (opened on first use)."""

    def __init__(self, bus: Bus, spec: WorkflowSpec) -> None:
        self.bus = bus
        self.threshold = spec.limits.offload_bytes
        self.ttl_s = spec.limits.offload_ttl_s
        self.bucket = Names.of(spec).objects_bucket
        self._store: ObjectStore | None = None
        self._opening = asyncio.Lock()
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cached_bytes = 0

    def _remember(self, name: str, data: bytes) -> None:
        if len(data) > CACHE_BYTES // 4 or name in self._cache:
            return
        self._cache[name] = data
        self._cached_bytes += len(data)
        while self._cached_bytes > CACHE_BYTES:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= len(old)

    async def _get(self, name: str) -> bytes | None:
        data = self._cache.get(name)
        if data is not None:
            self._cache.move_to_end(name)
            return data
        data = await (await self.objects()).get(name)
        if data is not None:
            self._remember(name, data)
        return data

    async def objects(self) -> ObjectStore:
        if self._store is None:
            async with self._opening:
                if self._store is None:
                    self._store = await self.bus.object_store(self.bucket, ttl_s=self.ttl_s)
        return self._store

    async def load(self, task: Task, *, missing_ok: bool = False) -> Resolved:
        """Replace every reference in ``task`` by its value (in place).

        Error handling: a missing object raises ``MissingObject`` (or, with
        ``missing_ok``, leaves the reference where it is); bus errors propagate.
        """
        found = refs(task)
        resolved: Resolved = {}
        if not found:
            return resolved
        for section, key, name in found:
            data = await self._get(name)
            if data is None:
                if missing_ok:
                    continue
                raise MissingObject(f"task {task.id}: {section}.{key} was offloaded as {name!r}, "
                                    "which is no longer in the object store")
            holder: dict[str, Any] = getattr(task, section)
            ref = holder[key]
            holder[key] = msgspec.msgpack.decode(data)
            resolved[(section, key)] = (holder[key], ref)
        return resolved

    async def store(self, task: Task, resolved: Resolved | None = None) -> list[str]:
        """Offload ``task``'s big values (in place); returns the names newly put.

        Error handling: bus errors propagate (the hop is retried; a put is idempotent).
        """
        if self.threshold is None and not resolved:
            return []
        put: list[str] = []
        for section in SECTIONS:
            holder: dict[str, Any] = getattr(task, section)
            if not resolved and self.threshold is not None and (
                    not holder or len(_encoder.encode(holder)) <= self.threshold):
                # the hot path: one encoding shows no value in this section can be big
                continue
            for key, value in holder.items():
                if is_ref(value):
                    continue
                before = resolved.get((section, key)) if resolved else None
                if before is not None and before[0] is value:
                    holder[key] = before[1]  # untouched by the agent: same object, no put
                    continue
                if self.threshold is None or isinstance(value, int | float | bool | None):
                    continue
                data = _encoder.encode(value)
                if len(data) <= self.threshold:
                    continue
                name = f"{task.id}/{hashlib.blake2b(data, digest_size=16).hexdigest()}"
                if name not in task.objects:
                    await (await self.objects()).put(name, data)
                    self._remember(name, data)
                    task.objects.append(name)
                    put.append(name)
                holder[key] = {REF: name, "bytes": len(data)}
        return put

    async def delete_all(self, task: Task) -> None:
        """Delete every object the task put (the sink, once its row is on disk).
        Idempotent. Error handling: bus errors propagate (the caller does not ack)."""
        if not task.objects:
            return
        store = await self.objects()
        for name in task.objects:
            await store.delete(name)
            data = self._cache.pop(name, None)
            if data is not None:
                self._cached_bytes -= len(data)
