"""Which replica a request should go to, when replicas publish their load. Pure.

The rule (also in docs/llm-registry.md):

- **Cost of a replica** = ``(queue + waiting) / capacity + kv_cache_usage``, where
  ``queue = max(ours, running + waiting)``: the requests ahead of a new one.
  ``ours`` is this client's own outstanding count on the replica (exact, now);
  ``running + waiting`` is the server's published count (every client's, up to a
  scrape interval old). Taking the larger keeps a burst of our own requests
  visible before the next scrape shows it. ``waiting`` is counted twice: a
  request beyond the running batch waits a whole batch turn, one inside it only
  shares the step. ``capacity`` is the replica's published ``max_num_seqs`` (its
  batch) or else our adaptive limit for it. A nearly full KV cache (preemptions
  ahead) adds up to 1.
- **No load published** (a static endpoint, a server without vLLM metrics, a
  load older than ``STALE_S``): cost = ``ours / capacity``.
- **Stickiness**: the task's own replica (its prefix cache) is kept while its
  cost is at most ``STICKY_SLACK`` (one batch turn) above the cheapest
  replica's; beyond that the request moves.
- Ties go to fewer of our own outstanding requests, then to the URL (stable).

Without any published load the client keeps today's least-outstanding choice
(``pool.select``); this rule applies when at least one candidate publishes.
"""

from __future__ import annotations

import msgspec

STALE_S = 5.0  # a load older than this says nothing about now
STICKY_SLACK = 1.0  # in batch turns: how much worse the task's replica may be


class ReplicaLoad(msgspec.Struct, kw_only=True, frozen=True):
    """A replica's load as its server reports it. None: the server does not export it."""

    waiting: int | None = None
    running: int | None = None
    kv_cache_usage: float | None = None  # 0..1
    prefix_hit_rate: float | None = None  # 0..1, over the last scrape interval


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    """What the rule sees of one admissible replica."""

    url: str
    ours: int  # this client's outstanding requests there
    limit: int  # this client's adaptive limit there
    load: ReplicaLoad | None = None
    load_age_s: float = 0.0
    capacity: int | None = None  # the replica's max_num_seqs, when published


def cost(c: Candidate) -> float:
    """Expected wait of a new request on ``c``, in batch turns (see the module doc)."""
    capacity = max(1, c.capacity or c.limit)
    load = c.load if c.load is not None and c.load_age_s <= STALE_S else None
    if load is None or (load.running is None and load.waiting is None):
        return c.ours / capacity + (_kv(load))
    waiting = load.waiting or 0
    queue = max(c.ours, (load.running or 0) + waiting)
    return (queue + waiting) / capacity + _kv(load)


def _kv(load: ReplicaLoad | None) -> float:
    if load is None or load.kv_cache_usage is None:
        return 0.0
    return max(0.0, min(1.0, load.kv_cache_usage))


def choose(candidates: list[Candidate], *, sticky: str | None = None,
           avoid: frozenset[str] | set[str] = frozenset()) -> str | None:
    """The URL a request should go to among admissible ``candidates`` (None: none).

    ``sticky``: the task's replica (kept within ``STICKY_SLACK``); ``avoid``: replicas
    this request already failed on, used only when nothing else is admissible.
    """
    if not candidates:
        return None
    preferred = [c for c in candidates if c.url not in avoid] or candidates
    best = min(preferred, key=lambda c: (cost(c), c.ours, c.url))
    if sticky is not None:
        own = next((c for c in candidates if c.url == sticky), None)
        if own is not None and cost(own) <= cost(best) + STICKY_SLACK:
            return own.url
    return best.url
