"""The one backoff helper of the project: jittered exponential delays. Pure: the random
source is injected.

Retries are a different thing from capacity signals: a 429 lowers the
endpoint's concurrency limit (see ``limiter``); the backoff only spaces out
the caller's next attempt so that a fleet of clients does not retry in step.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """``delay(n)`` for the n-th retry (0-based): "equal jitter" in ``[c/2, c]``.

    ``c = min(cap_s, base_s * 2**n)``. Half of the window is fixed so that a
    retry never comes back immediately; the other half is random so that
    clients that failed together spread out.
    """

    def __init__(
        self, base_s: float, cap_s: float, rng: Callable[[], float] = random.random
    ) -> None:
        if base_s < 0 or cap_s < 0:
            raise ValueError("backoff base and cap must be >= 0")
        self.base_s = base_s
        self.cap_s = cap_s
        self._rng = rng

    def ceiling(self, attempt: int) -> float:
        # Cap the exponent: 2**1100 overflows a float.
        return min(self.cap_s, self.base_s * 2.0 ** min(max(attempt, 0), 60))

    def delay(self, attempt: int) -> float:
        c = self.ceiling(attempt)
        return c / 2 + self._rng() * c / 2


class Retrying:
    """The backoff of one loop that retries until it succeeds: ``next()`` after a
    failure gives the delay to wait, ``reset()`` after a success starts over.

    One object per loop (fetch, sink, set-up calls, fleet-state watcher), so that
    every long-running loop in the project spaces its retries the same way.
    """

    __slots__ = ("_attempt", "policy")

    def __init__(self, base_s: float, cap_s: float, rng: Callable[[], float] = random.random) -> None:
        self.policy = Backoff(base_s, cap_s, rng)
        self._attempt = 0

    def next(self) -> float:
        delay = self.policy.delay(self._attempt)
        self._attempt += 1
        return delay

    def reset(self) -> None:
        self._attempt = 0
