"""Key-value helpers on JetStream: create-once keys (``types.KeyValue``)."""

from __future__ import annotations

from typing import Any

from matrix_p2p.bus.errors import AlreadyExists, NotFound, translate


class JetStreamKV:
    """Create-once keys in a JetStream KV bucket: the record that a task id was submitted."""

    def __init__(self, kv: Any, bucket: str) -> None:
        self._kv = kv
        self.bucket = bucket

    async def create(self, key: str, value: bytes = b"1") -> bool:
        """True if the key is new; False if it was already there."""
        try:
            with translate(f"key-value create {self.bucket}/{key}"):
                await self._kv.create(key, value)
        except AlreadyExists:
            return False
        return True

    async def exists(self, key: str) -> bool:
        try:
            with translate(f"key-value get {self.bucket}/{key}"):
                await self._kv.get(key)
        except NotFound:  # never written, or deleted
            return False
        return True

    async def get(self, key: str) -> bytes | None:
        try:
            with translate(f"key-value get {self.bucket}/{key}"):
                entry = await self._kv.get(key)
        except NotFound:  # never written, or deleted
            return None
        return bytes(entry.value or b"")
