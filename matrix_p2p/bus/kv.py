"""Key-value helpers: create-once keys (``types.KeyValue``) on JetStream and in memory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from matrix_p2p.bus.errors import AlreadyExists, NotFound, translate

if TYPE_CHECKING:
    from matrix_p2p.bus.memory import MemoryBus


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


class MemoryKV:
    """Create-once keys in one bucket of a ``MemoryBus``."""

    def __init__(self, bus: MemoryBus, bucket: str, items: dict[str, bytes]) -> None:
        self._bus = bus
        self.bucket = bucket
        self._items = items

    async def create(self, key: str, value: bytes = b"1") -> bool:
        self._bus.check("kv.create", key, f"key-value create {self.bucket}/{key}")
        if key in self._items:
            return False
        self._items[key] = value
        return True

    async def exists(self, key: str) -> bool:
        self._bus.check("kv.exists", key, f"key-value get {self.bucket}/{key}")
        return key in self._items

    async def get(self, key: str) -> bytes | None:
        self._bus.check("kv.get", key, f"key-value get {self.bucket}/{key}")
        return self._items.get(key)
