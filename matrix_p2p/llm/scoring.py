"""Which replica a request should go to, when replicas publish their load. Pure.

The rule (also in docs/llm-registry.md):

- **Cost of a replica** = ``(ours + waiting) / capacity + kv_cache_usage``.
  ``ours`` is this client's own outstanding count there (exact, now): the
  least-outstanding rule. ``waiting`` is the replica's published queue beyond
  its running batch (every client's requests, up to a scrape interval old): a
  request sent there waits a whole batch turn per ``capacity`` requests ahead.
  Only the queue is taken from the published load, not the running count: a
  queue lasts, while a running count a second old says little about a batch
  whose requests take less than that, and every worker reading the same stale
  count would herd onto the replica that looked emptiest (measured: twice the
  latency at 60 % load with ``max(ours, running + waiting)``). ``capacity`` is
  the replica's published ``max_num_seqs`` (its batch) or else our adaptive
  limit for it. A nearly full KV cache (preemptions ahead) adds up to 1.
- **No load published** (a static endpoint, a server without vLLM metrics, a
  load older than ``STALE_S``): cost = ``ours / capacity``.
- **Stickiness**: the task's own replica (its prefix cache) is kept while its
  cost is at most ``STICKY_SLACK`` (one batch turn) above the cheapest
  replica's; beyond that the request moves. (A pinned request first waits for
  its replica as before, ``LLMConfig.sticky_wait_s``; the rule decides where it
  goes when it does not.)
- Ties go to fewer of our own outstanding requests, then to the smaller
  published running count (a slow replica's batch stays fuller; as a
  tie-break only, so a stale count cannot herd the fleet), then to the URL.

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
    waiting = (load.waiting or 0) if load is not None else 0
    return (c.ours + waiting) / capacity + _kv(load)


def _running(c: Candidate) -> int:
    """Tie-break: the published running count (a slow replica's batch stays fuller)."""
    if c.load is None or c.load_age_s > STALE_S or c.load.running is None:
        return 0
    return c.load.running


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
    best = min(preferred, key=lambda c: (cost(c), c.ours, _running(c), c.url))
    if sticky is not None:
        own = next((c for c in candidates if c.url == sticky), None)
        if own is not None and keeps(own, [best]):
            return own.url
    return best.url


def keeps(sticky: Candidate, others: list[Candidate]) -> bool:
    """Whether a task stays with (or waits for) its replica ``sticky`` rather than go
    to the cheapest of ``others``: within ``STICKY_SLACK`` of it."""
    if not others:
        return True
    return cost(sticky) <= min(cost(c) for c in others) + STICKY_SLACK
