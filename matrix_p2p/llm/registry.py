"""Replicas that announce themselves: what a model server's registrar publishes, and
how a client reads it. Pure: no I/O (the registrar is ``registrar``, the bucket
``bus.registry_kv``).

A registrar runs beside each model server (``python -m matrix_p2p llm-register``):
one entry per replica in the fleet's registry bucket, its value a ``Registration``
(URL, models, capacity hints, and the load scraped from the server's own
``/metrics`` each second). Every scrape renews the entry; an entry not renewed for
``ttl_s`` is dead (the registrar, or its host, is gone) whether or not the broker
has expired it yet.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol, runtime_checkable

import msgspec

from matrix_p2p.llm.scoring import ReplicaLoad
from matrix_p2p.llm.wire import parse_waiting

REGISTRY_BUCKET = "MX_LLM_REPLICAS"
BUCKET_ENV = "MX_LLM_REGISTRY_BUCKET"  # another bucket: one registry per fleet on a broker
DEFAULT_REGISTRY_TTL_S = 10.0


class Registration(msgspec.Struct, kw_only=True):
    """One replica's entry in the registry. New fields get defaults."""

    url: str  # normalised, without /v1
    models: list[str]
    max_num_seqs: int | None = None  # capacity hint: the running batch size
    max_model_len: int | None = None
    load: ReplicaLoad = msgspec.field(default_factory=ReplicaLoad)
    updated_at: float = 0.0  # wall clock of the registrar
    ttl_s: float = DEFAULT_REGISTRY_TTL_S
    registrar: str = ""


def default_bucket() -> str:
    """The registry bucket: ``$MX_LLM_REGISTRY_BUCKET``, else ``MX_LLM_REPLICAS``."""
    return os.environ.get(BUCKET_ENV) or REGISTRY_BUCKET


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Registration)


def encode(reg: Registration) -> bytes:
    return _encoder.encode(reg)


def decode(raw: bytes) -> Registration:
    """Raises ``msgspec.DecodeError``/``ValidationError`` for a value that is not one."""
    return _decoder.decode(raw)


def is_live(reg: Registration, wall_now: float) -> bool:
    """Renewed within its TTL: a registrar killed with ``kill -9`` stops renewing."""
    return wall_now - reg.updated_at <= reg.ttl_s


def serving(entries: Iterable[Registration], model: str | None,
            wall_now: float) -> dict[str, Registration]:
    """Live entries that serve ``model`` (any model when None), by URL."""
    return {r.url: r for r in entries
            if is_live(r, wall_now) and (model is None or model in r.models)}


# -- the server's /metrics --------------------------------------------------------
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # new name, then <0.9
PREFIX_HITS = ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")
PREFIX_QUERIES = ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")


def metric_sum(text: str, name: str) -> float | None:
    """The sum of the samples of metric ``name`` (exactly that name, any labels),
    or None when the text has none."""
    total: float | None = None
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name):]
        if not rest or rest[0] not in "{ ":
            continue  # a longer name with the same prefix
        try:
            total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
    return total


def first_metric(text: str, names: Iterable[str]) -> float | None:
    for name in names:
        value = metric_sum(text, name)
        if value is not None:
            return value
    return None


class PrefixCounters(msgspec.Struct, frozen=True):
    hits: float
    queries: float


def parse_load(text: str, previous: PrefixCounters | None = None
               ) -> tuple[ReplicaLoad, PrefixCounters | None]:
    """The load in a Prometheus text, and the prefix-cache counters to pass next time
    (the hit rate is over the interval between two scrapes; a counter reset, a restart,
    restarts it)."""
    running = metric_sum(text, "vllm:num_requests_running")
    hits, queries = first_metric(text, PREFIX_HITS), first_metric(text, PREFIX_QUERIES)
    counters = PrefixCounters(hits, queries) if hits is not None and queries is not None else None
    rate: float | None = None
    if counters is not None and previous is not None:
        dq, dh = counters.queries - previous.queries, counters.hits - previous.hits
        if dq > 0 and dh >= 0:
            rate = min(1.0, dh / dq)
    kv = first_metric(text, KV_USAGE)
    load = ReplicaLoad(
        waiting=parse_waiting(text),
        running=None if running is None else int(running),
        kv_cache_usage=None if kv is None else max(0.0, min(1.0, kv)),
        prefix_hit_rate=rate,
    )
    return load, counters


class _ModelCard(msgspec.Struct):
    id: str
    max_model_len: int | None = None


class _ModelCards(msgspec.Struct):
    data: list[_ModelCard]


_cards_decoder = msgspec.json.Decoder(_ModelCards)


def parse_models(raw: bytes) -> tuple[list[str], int | None]:
    """Model ids and the smallest ``max_model_len`` vLLM reports in ``/v1/models``.
    Raises ``ValueError`` with the reason."""
    try:
        cards = _cards_decoder.decode(raw).data
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"GET /v1/models: {exc}") from None
    lens = [c.max_model_len for c in cards if c.max_model_len]
    return [c.id for c in cards], (min(lens) if lens else None)


def loads(entries: Mapping[str, Registration]) -> dict[str, ReplicaLoad]:
    return {url: r.load for url, r in entries.items()}


Callback = Callable[[], None]


@runtime_checkable
class ReplicaSource(Protocol):
    """The registry as a client follows it (``bus.registry_kv.ReplicaRegistry``)."""

    def entries(self) -> list[Registration]:
        """Every entry the registry holds now (lapsed ones included: filter with
        ``serving``)."""

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Call ``callback()`` after every change. Must not block. Returns an
        unsubscribe function."""
