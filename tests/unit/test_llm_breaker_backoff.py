from __future__ import annotations

import itertools

import pytest

from matrix_p2p.backoff import Backoff
from matrix_p2p.llm.breaker import CircuitBreaker


def test_opens_after_n_consecutive_failures() -> None:
    b = CircuitBreaker(3, cooldown_s=5.0)
    assert b.on_failure(0.0) is None
    assert b.on_success(0.1) is None  # resets the streak
    assert b.on_failure(1.0) is None
    assert b.on_failure(1.1) is None
    assert b.on_failure(1.2) == "ejected"
    assert b.state == "open"
    assert not b.can_admit(3.0)


def test_half_open_admits_one_probe_then_closes() -> None:
    b = CircuitBreaker(1, cooldown_s=5.0)
    b.on_failure(0.0)
    assert b.can_admit(5.0)
    assert b.on_admit(5.0)
    assert b.state == "half_open"
    assert not b.can_admit(5.1)  # one probe at a time
    assert b.on_success(6.0) == "recovered"
    assert b.can_admit(6.0)
    assert b.healthy


def test_failed_probe_reopens_for_another_cooldown() -> None:
    b = CircuitBreaker(1, cooldown_s=5.0)
    b.on_failure(0.0)
    b.on_admit(5.0)
    assert b.on_failure(5.5) is None
    assert b.state == "open"
    assert not b.can_admit(10.0)
    assert b.can_admit(10.5)


def test_abandoned_probe_lets_the_next_request_probe() -> None:
    b = CircuitBreaker(1, cooldown_s=1.0)
    b.on_failure(0.0)
    b.on_admit(2.0)
    b.on_abandoned(2.1)
    assert b.can_admit(2.2)


def test_answered_probe_recovers() -> None:
    b = CircuitBreaker(1, cooldown_s=1.0)
    b.on_failure(0.0)
    b.on_admit(2.0)
    assert b.on_answered(2.1) == "recovered"


def test_backoff_bounds_and_cap() -> None:
    lo = Backoff(0.5, 20.0, rng=lambda: 0.0)
    hi = Backoff(0.5, 20.0, rng=lambda: 0.999999)
    for n in range(12):
        c = min(20.0, 0.5 * 2**n)
        assert lo.delay(n) == pytest.approx(c / 2)
        assert c / 2 <= hi.delay(n) <= c
    assert hi.delay(10_000) <= 20.0


def test_backoff_jitter_spreads() -> None:
    seq = itertools.cycle([0.0, 0.25, 0.5, 0.75])
    b = Backoff(1.0, 100.0, rng=lambda: next(seq))
    delays = {b.delay(3) for _ in range(4)}
    assert len(delays) == 4
    assert min(delays) == 4.0
    assert max(delays) < 8.0


def test_backoff_rejects_negative() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        Backoff(-1, 1)
