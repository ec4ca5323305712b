"""Adaptive concurrency limit for one endpoint (AIMD). Pure: the caller passes ``now``.

The limit is how many requests this client keeps in flight to the endpoint.

- Slow start: +1 per success (the limit doubles per round trip) until the
  first congestion signal, as TCP does.
- Then additive increase: +1/limit per success (about +1 per round trip).
- Increases only count while the limit is actually used (in-flight at least
  half the limit), otherwise an idle client would grow an unbounded limit.
- Multiplicative decrease (x ``decrease_factor``) on a congestion signal:
  429, 503, a timeout, a latency gradient (recent time per output token well
  above the observed baseline), or a growing vLLM waiting queue. At most one
  decrease per round trip: a burst of 429s from one window is one signal.
- ``Retry-After`` blocks the endpoint until then (``blocked_until``).
"""

from __future__ import annotations

import math

# Constants chosen for LLM serving, where one request lasts seconds and the
# server batches: a gentle decrease keeps the batch large.
DECREASE_FACTOR = 0.7
LATENCY_TOLERANCE = 2.0  # recent/baseline ratio that counts as congestion
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
        self.slow_start = True
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
        if self._queue_depth:
            return False  # a queue at the server: hold, do not grow
        if inflight * 2 < self._limit:
            return False  # app-limited: the limit was not tested
        if self.slow_start:
            self._limit = self._clamp(self._limit + 1)
        else:
            self._limit = self._clamp(self._limit + 1 / self._limit)
        return False

    def on_congestion(self, now: float, retry_after_s: float | None = None) -> bool:
        """429/503/timeout/latency. Returns True if the limit went down now."""
        if retry_after_s is not None and retry_after_s > 0:
            self.blocked_until = max(self.blocked_until, now + retry_after_s)
        self.slow_start = False
        if now - self.last_decrease_at < max(self._rtt, MIN_DECREASE_GAP_S):
            return False
        self.last_decrease_at = now
        before = self._limit
        self._limit = self._clamp(self._limit * self.decrease_factor)
        if self._limit < before:
            self.decreases += 1
        # Start a fresh latency window after reacting to it.
        self._short = self._baseline if self._baseline != math.inf else self._short
        return self._limit < before

    def on_queue_depth(self, now: float, waiting: int) -> bool:
        """vLLM's ``num_requests_waiting``: a queue means stop growing; a growing
        queue means decrease. Returns True if the limit went down."""
        previous, self._queue_depth = self._queue_depth, waiting
        if waiting > 0 and previous is not None and waiting > previous:
            return self.on_congestion(now)
        return False

    def block_until(self, until: float) -> None:
        self.blocked_until = max(self.blocked_until, until)

    def adopt(self, limit: int) -> None:
        """Start from a limit learned elsewhere (the fleet): no slow start."""
        self._limit = self._clamp(limit)
        self.slow_start = False
