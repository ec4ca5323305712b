"""Per-endpoint circuit breaker. Pure: the caller passes ``now``.

closed --N consecutive failures--> open --cooldown--> half-open (one probe
request admitted) --success--> closed, --failure--> open again.
Failures are connection errors, timeouts and 5xx other than 503 (503 is a
capacity signal and goes to the limiter instead).
"""

from __future__ import annotations

from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]
Transition = Literal["ejected", "recovered"] | None


class CircuitBreaker:
    def __init__(self, failures: int, cooldown_s: float) -> None:
        if failures < 1:
            raise ValueError("breaker_failures must be >= 1")
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.state: BreakerState = "closed"
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self.probe_in_flight = False

    @property
    def healthy(self) -> bool:
        return self.state == "closed"

    def reopen_at(self) -> float:
        """When an open breaker will admit its probe."""
        return self.opened_at + self.cooldown_s

    def can_admit(self, now: float) -> bool:
        """Would a request be admitted now? Does not change state."""
        if self.state == "closed":
            return True
        if self.probe_in_flight:
            return False
        return self.state == "half_open" or now >= self.reopen_at()

    def on_admit(self, now: float) -> bool:
        """Record an admitted request; True when it is the half-open probe."""
        if self.state == "closed":
            return False
        self.state = "half_open"
        self.probe_in_flight = True
        return True

    def on_success(self, now: float) -> Transition:
        self.consecutive_failures = 0
        self.probe_in_flight = False
        if self.state != "closed":
            self.state = "closed"
            return "recovered"
        return None

    def on_failure(self, now: float) -> Transition:
        self.consecutive_failures += 1
        if self.state == "half_open":
            # The probe failed: back to open for another cooldown.
            self.state = "open"
            self.opened_at = now
            self.probe_in_flight = False
            return None
        if self.state == "closed" and self.consecutive_failures >= self.failures:
            self.state = "open"
            self.opened_at = now
            return "ejected"
        return None

    def on_answered(self, now: float) -> Transition:
        """The server answered with a status that says nothing bad about health
        (4xx, 429, 503): it is up, so the failure streak ends and a probe passes."""
        return self.on_success(now)

    def on_abandoned(self, now: float) -> None:
        """The request ended with no verdict (cancelled by the caller)."""
        if self.state == "half_open" and self.probe_in_flight:
            # Let the next request be the probe.
            self.probe_in_flight = False
