"""Adaptive concurrency limit for one endpoint (AIMD). Pure: the caller passes ``now``.

The limit is how many requests this client keeps in flight to the endpoint.

- Slow start: +1 per success (the limit doubles per round trip) until the
  first congestion signal, as TCP does. After a congestion episode (one or
  several decreases in a row), the limit grows at that speed again back up to
  ``decrease_factor`` x the limit where the episode began (TCP's ssthresh), so
  a slow-start overshoot does not leave it far below capacity for minutes.
- Then additive increase: +1/limit per success (about +1 per round trip).
- Increases only count while the limit is actually used (in-flight at least
  half the limit), otherwise an idle client would grow an unbounded limit.
- Multiplicative decrease (x ``decrease_factor``) on a congestion signal:
  429, 503, a timeout, a latency gradient (recent time per output token an
  order of magnitude above the observed baseline). At most one decrease per
  round trip: a burst of 429s from one window is one signal. A vLLM waiting
  queue well over its target takes back half the excess instead (a measured
  overshoot, not a guess).
- The target is a *small* waiting queue (``QUEUE_TARGET_FRACTION`` of the
  limit): when a sequence finishes, a waiting one takes its batch slot at
  once, so the server's batch stays full. Growth holds above the target.
- The latency gradient is only a backstop: under continuous batching the
  time per output token grows several-fold from an empty to a full batch
  (that is the server being used well, not congestion), so it fires only
  when queueing dominates.
- ``Retry-After`` blocks the endpoint until then (``blocked_until``).
"""

from __future__ import annotations

import math

# Constants chosen for LLM serving, where one request lasts seconds and the
# server batches: a gentle decrease keeps the batch large.
DECREASE_FACTOR = 0.7
LATENCY_TOLERANCE = 8.0  # recent/baseline time per token that counts as queueing
QUEUE_TARGET_FRACTION = 0.05  # waiting requests per unit of limit that keep the batch full
HEADROOM_GAIN = 4.0  # additive increase per round trip while the queue is under target
QUEUE_TARGET_MIN = 8  # servers admit at step boundaries: a few waiting requests are normal
LATENCY_MIN_SAMPLES = 20  # before the baseline means anything
SHORT_ALPHA = 0.1  # EWMA weight of the recent latency
BASELINE_DRIFT = 0.002  # baseline creeps up 0.2 % per sample to follow workload changes
MIN_DECREASE_GAP_S = 0.05


class AIMDLimiter:
    def __init__(
        self,
        initial: int,
        min_limit: int = 1,
        max_limit: int = 2048,
        *,
        decrease_factor: float = DECREASE_FACTOR,
        latency_tolerance: float | None = LATENCY_TOLERANCE,
    ) -> None:
        if not 1 <= min_limit <= max_limit:
            raise ValueError(f"need 1 <= min_limit <= max_limit, got {min_limit}, {max_limit}")
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.decrease_factor = decrease_factor
        self.latency_tolerance = latency_tolerance
        self._limit = float(self._clamp(initial))
        self._ssthresh = math.inf  # below it: +1 per success; above: +1/limit
        self._episode_peak = 0.0  # the limit when the current congestion episode began
        self.blocked_until = 0.0
        self.last_decrease_at = -math.inf
        self.decreases = 0
        self._rtt = 0.0  # EWMA of whole-request latency: the decrease cooldown
        self._short = 0.0  # EWMA of latency per output token
        self._baseline = math.inf
        self._samples = 0
        self._queue_depth: int | None = None

    # -- reading -------------------------------------------------------
    @property
    def limit(self) -> int:
        return int(self._limit)

    @property
    def slow_start(self) -> bool:
        return self._limit < self._ssthresh

    def blocked(self, now: float) -> bool:
        return now < self.blocked_until

    def _clamp(self, v: float) -> float:
        return float(min(self.max_limit, max(self.min_limit, v)))

    # -- signals -------------------------------------------------------
    def on_success(self, now: float, latency_s: float, inflight: int, tokens: int = 1) -> bool:
        """A request succeeded. ``inflight`` counts it. Returns True if it was
        read as congestion (the latency gradient) and the limit went down."""
        self._rtt = latency_s if self._rtt == 0.0 else 0.8 * self._rtt + 0.2 * latency_s
        per_token = latency_s / max(1, tokens)
        self._samples += 1
        self._short = per_token if self._samples == 1 else (
            (1 - SHORT_ALPHA) * self._short + SHORT_ALPHA * per_token
        )
        self._baseline = min(per_token, self._baseline * (1 + BASELINE_DRIFT))
        if (
            self.latency_tolerance is not None
            and self._samples >= LATENCY_MIN_SAMPLES
            and self._short > self.latency_tolerance * self._baseline
        ):
            return self.on_congestion(now)
        if self._queue_depth is not None and self._queue_depth > self.queue_target():
            return False  # more queue than the batch needs: hold, do not grow
        if inflight * 2 < self._limit:
            return False  # app-limited: the limit was not tested
        if self._limit < self._ssthresh:
            self._limit = self._clamp(self._limit + 1)
        elif self._queue_depth is not None and self._queue_depth < self.queue_target():
            # the server's own queue says there is room: probe faster than blind AIMD
            self._limit = self._clamp(self._limit + HEADROOM_GAIN / self._limit)
        else:
            self._limit = self._clamp(self._limit + 1 / self._limit)
        return False

    def on_congestion(self, now: float, retry_after_s: float | None = None) -> bool:
        """429/503/timeout/latency. Returns True if the limit went down now."""
        if retry_after_s is not None and retry_after_s > 0:
            self.blocked_until = max(self.blocked_until, now + retry_after_s)
        gap = max(self._rtt, MIN_DECREASE_GAP_S)
        if now - self.last_decrease_at < gap:
            self._ssthresh = min(self._ssthresh, self._limit)
            return False
        before = self._limit
        if now - self.last_decrease_at > 4 * gap:
            self._episode_peak = before  # a new episode, not the tail of the last one
        self.last_decrease_at = now
        self._limit = self._clamp(self._limit * self.decrease_factor)
        self._ssthresh = max(self._limit, self._episode_peak * self.decrease_factor)
        if self._limit < before:
            self.decreases += 1
        # Start a fresh latency window after reacting to it.
        self._short = self._baseline if self._baseline != math.inf else self._short
        return self._limit < before

    def queue_target(self) -> int:
        return max(QUEUE_TARGET_MIN, int(self._limit * QUEUE_TARGET_FRACTION))

    def on_queue_depth(self, now: float, waiting: int) -> bool:
        """vLLM's ``num_requests_waiting`` (polled): over the target, stop growing; over
        twice the target, give back half the excess (the queue says by how much the
        fleet overshoots the batch; half leaves room for other clients doing the
        same). Returns True if the limit went down."""
        previous, self._queue_depth = self._queue_depth, waiting
        target = self.queue_target()
        # two polls in a row over twice the target: a standing queue, not step-boundary noise
        if waiting <= 2 * target or previous is None or previous <= 2 * target:
            return False
        before = self._limit
        self._limit = self._clamp(self._limit - (waiting - target) / 2)
        self._ssthresh = min(self._ssthresh, self._limit)
        if self._limit < before:
            self.decreases += 1
            self.last_decrease_at = now
            return True
        return False

    def block_until(self, until: float) -> None:
        self.blocked_until = max(self.blocked_until, until)

    def adopt(self, limit: int) -> None:
        """Start from a limit learned elsewhere (the fleet): no slow start."""
        self._limit = self._clamp(limit)
        self._ssthresh = self._limit
