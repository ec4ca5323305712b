"""The response cache: identical requests answered from the store instead of a server.

Optional per LLM resource (``resources.llm.<name>.cache: true``; off by default;
``--no-cache`` bypasses it for one run or worker). The store is a key-value bucket of
the workflow's namespace (``topology.Names.llm_cache_bucket``), so a fleet shares it.

The key (``cache_key``, pure) is a digest of everything that decides the answer: the
call kind, the model, and the whole request body (messages or prompt, every sampling
parameter, ``seed``, ``response_format``, tools) except how it is delivered (``stream``).
A change to one role's prompt changes only that role's keys: a ``--new-version`` run
re-asks that role and answers the others from the cache.

Where caching is wrong: a request sampled at ``temperature > 0`` without a ``seed`` has
many right answers, and the cache gives the first one forever. Turn it on for
deterministic requests (greedy, or a seed per task), or when one sample is all you want.

Tokens: a hit returns ``prompt_tokens=0, completion_tokens=0`` (nothing was generated,
and the row says ``cache_hits``); the tokens the original answer cost are counted as
saved (``CacheStats``), never again as generated.

Error handling: the cache never fails a call: a store that cannot be read is a miss, one
that cannot be written is skipped (both logged once per kind of error).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import msgspec
import structlog

from matrix_p2p.errors import BusError
from matrix_p2p.llm.types import LLMResponse, LLMResult, ToolCall

log = structlog.get_logger(__name__)

KEY_VERSION = "1"  # bump when the key's recipe changes: old entries then stop matching
_NOT_IN_KEY = frozenset({"stream", "stream_options"})
_key_encoder = msgspec.json.Encoder(order="sorted")


def cache_key(kind: str, model: str, body: Mapping[str, Any]) -> str:
    """The store key of a request: the same for requests that must get the same answer."""
    what = {k: v for k, v in body.items() if k not in _NOT_IN_KEY}
    what["model"] = model
    raw = _key_encoder.encode([KEY_VERSION, kind, what])
    return hashlib.sha256(raw).hexdigest()


class Entry(msgspec.Struct, kw_only=True, frozen=True):
    """What is stored: the answer, and what it cost when it was generated."""

    text: str
    model: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_calls: tuple[ToolCall, ...] = ()


_entry_encoder = msgspec.json.Encoder()
_entry_decoder = msgspec.json.Decoder(Entry)


def entry_of(r: LLMResponse) -> Entry:
    return Entry(text=r.text, model=r.model, finish_reason=r.finish_reason,
                 prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens,
                 tool_calls=r.tool_calls)


def response_of(e: Entry) -> LLMResponse:
    """A hit as the caller sees it: the answer, no tokens generated, ``cached`` set."""
    return LLMResponse(text=e.text, model=e.model, finish_reason=e.finish_reason,
                       tool_calls=e.tool_calls, endpoint="", cached=True,
                       prompt_tokens=0, completion_tokens=0)


def cacheable(r: LLMResponse) -> bool:
    """Only whole answers are kept: one cut by ``max_tokens`` is kept too (the same
    request would be cut the same way), one without a finish reason is not."""
    return r.finish_reason is not None


class Store(Protocol):
    """The key-value bucket (``bus.KeyValue``): create-once keys, so the first answer
    stored for a key is the one every worker serves."""

    async def create(self, key: str, value: bytes = ...) -> bool: ...

    async def get(self, key: str) -> bytes | None: ...


class CacheStats(msgspec.Struct, kw_only=True):
    hits: int = 0
    misses: int = 0
    saved_prompt_tokens: int = 0  # what the hits' answers cost when they were generated
    saved_completion_tokens: int = 0


class ResponseCache:
    """A ``Store`` seen as a cache of ``LLMResponse``s, with its counters."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.stats = CacheStats()
        self._warned: set[str] = set()

    async def through(self, kind: str, model: str | None, body: Mapping[str, Any],
                      call: Callable[[], Awaitable[LLMResult]]) -> LLMResult:
        """The cached answer to the request, else ``call()``'s, stored when it is an
        answer. ``model`` None (unknown): no cache for this request."""
        if model is None:
            return await call()
        key = cache_key(kind, model, body)
        hit = await self.get(key)
        if hit is not None:
            return hit
        result = await call()
        if isinstance(result, LLMResponse):
            await self.put(key, result)
        return result

    async def get(self, key: str) -> LLMResponse | None:
        try:
            raw = await self._store.get(key)
        except BusError as exc:
            self._warn("get", exc)
            raw = None
        entry: Entry | None = None
        if raw:
            try:
                entry = _entry_decoder.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self._warn("decode", exc)
        if entry is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        self.stats.saved_prompt_tokens += entry.prompt_tokens
        self.stats.saved_completion_tokens += entry.completion_tokens
        return response_of(entry)

    async def put(self, key: str, r: LLMResponse) -> None:
        if not cacheable(r):
            return
        try:
            await self._store.create(key, _entry_encoder.encode(entry_of(r)))
        except BusError as exc:  # too large for the bucket, broker away: skip it
            self._warn("put", exc)

    def _warn(self, what: str, exc: Exception) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("llm.cache_error", op=what, error=str(exc))
