"""Object stores (``types.ObjectStore``): large task values kept beside the envelope.

``JetStreamObjects`` wraps nats-py's object store (chunked into a stream named
``OBJ_<bucket>``); ``MemoryObjects`` is the in-process twin of ``memory.MemoryBus``.
A delete also purges the object's meta record, so nothing of a deleted object
stays in the stream (not even nats-py's "deleted" tombstone).
"""

from __future__ import annotations

import base64
import hashlib
import io
from typing import TYPE_CHECKING, Any

from matrix_p2p.bus.errors import AlreadyExists, NotFound, translate, when_ready
from matrix_p2p.errors import BusError

if TYPE_CHECKING:
    from matrix_p2p.bus.memory import MemoryBus


def stream_of(bucket: str) -> str:
    """The stream that holds an object bucket (nats-py's naming)."""
    return f"OBJ_{bucket}"


class JetStreamObjects:
    """One object bucket on JetStream."""

    def __init__(self, js: Any, obs: Any, bucket: str) -> None:
        self._js = js
        self._obs = obs
        self.bucket = bucket

    @classmethod
    async def open(cls, js: Any, bucket: str, *, replicas: int | None,
                   ttl_s: float | None) -> JetStreamObjects:
        """Open the bucket, creating it if needed (an existing one is used as it is)."""
        from nats.js import api

        cfg = api.ObjectStoreConfig(bucket=bucket, ttl=ttl_s, replicas=replicas or 1,
                                    storage=api.StorageType.FILE)
        try:
            with translate(f"create object bucket {bucket}"):
                obs = await when_ready(f"object bucket {bucket}",
                                       lambda: js.create_object_store(bucket, config=cfg))
        except AlreadyExists:
            with translate(f"open object bucket {bucket}"):
                obs = await js.object_store(bucket)
        return cls(js, obs, bucket)

    async def put(self, name: str, data: bytes) -> None:
        with translate(f"object put {self.bucket}/{name}", size=len(data)):
            await self._obs.put(name, data)

    async def get(self, name: str) -> bytes | None:
        what = f"object get {self.bucket}/{name}"
        try:
            with translate(what):
                info = await self._obs.get_info(name)
                if info.chunks == 1:
                    # one chunk (up to 128 KB): two direct reads, no consumer to set up
                    msg = await self._js.get_last_msg(stream_of(self.bucket),
                                                      f"$O.{self.bucket}.C.{info.nuid}")
                    data = bytes(msg.data or b"")
                    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
                    if info.digest.split("=", 1)[-1].rstrip("=") != digest.rstrip("="):
                        raise BusError(f"{what} failed: digest mismatch")
                    return data
                # into a buffer: nats-py's default appends chunk after chunk to one bytes
                # object, quadratic in the chunks (1.2 s for 16 MB; a few ms this way)
                buf = io.BytesIO()
                await self._obs.get(name, writeinto=buf)
        except NotFound:  # never written, or deleted
            return None
        return buf.getvalue()

    async def delete(self, name: str) -> bool:
        try:
            with translate(f"object delete {self.bucket}/{name}"):
                await self._obs.delete(name)
        except NotFound:
            return False
        meta = f"$O.{self.bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
        with translate(f"object delete {self.bucket}/{name} (meta)"):
            await self._js.purge_stream(stream_of(self.bucket), subject=meta)
        return True


class MemoryObjects:
    """One object bucket of a ``MemoryBus`` (fault hooks: ``obj.put/get/delete``)."""

    def __init__(self, bus: MemoryBus, bucket: str, items: dict[str, bytes]) -> None:
        self._bus = bus
        self.bucket = bucket
        self.items = items

    async def put(self, name: str, data: bytes) -> None:
        self._bus.check("obj.put", name, f"object put {self.bucket}/{name}")
        self.items[name] = bytes(data)

    async def get(self, name: str) -> bytes | None:
        self._bus.check("obj.get", name, f"object get {self.bucket}/{name}")
        return self.items.get(name)

    async def delete(self, name: str) -> bool:
        self._bus.check("obj.delete", name, f"object delete {self.bucket}/{name}")
        return self.items.pop(name, None) is not None
