"""Exact deduplication by a hash of the normalized text. The key is pure; the seen-set is not.

``dedup_key`` folds case, Unicode form, punctuation and whitespace, so that
copies differing only in those hash alike (near-duplicates with changed words
do not: that needs MinHash, a later step).

Deduplication across tasks needs state shared by every worker of the fleet.
``SeenSet`` is that interface: ``claim(key, task_id)`` records the first task
to present a key and returns the owner's id. Keyed by task id, a redelivered
task finds its own claim and is not taken for a duplicate of itself. The
runtime provides a JetStream KV-backed one to agents as ``ctx.seen``
(``matrix_p2p.runtime.seen``: create-if-absent, shared by the fleet);
``LocalSeenSet`` holds claims in one process (``scope: process``, and unit
tests), so duplicates handled by different processes are not caught there.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Protocol

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize(text: str) -> str:
    """Lower-cased NFKC words joined by single spaces; punctuation and symbols dropped."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _NON_WORD.sub(" ", folded).strip()


def dedup_key(text: str) -> str:
    """A 128-bit hex digest of ``normalize(text)``."""
    return hashlib.blake2b(normalize(text).encode(), digest_size=16).hexdigest()


class SeenSet(Protocol):
    async def claim(self, key: str, task_id: str) -> str:
        """Record ``task_id`` as the owner of ``key`` unless one exists; return the owner."""
        ...


class LocalSeenSet:
    """Claims held in this process only (see the module docstring)."""

    def __init__(self) -> None:
        self._owners: dict[str, str] = {}

    async def claim(self, key: str, task_id: str) -> str:
        return self._owners.setdefault(key, task_id)

    def __len__(self) -> int:
        return len(self._owners)


def duplicate_of(owner: str, task_id: str) -> str | None:
    """The task this one duplicates, or ``None`` when it owns the key itself."""
    return None if owner == task_id else owner
