from __future__ import annotations

import pytest

from matrix_p2p.llm.limiter import LATENCY_MIN_SAMPLES, AIMDLimiter


def test_slow_start_grows_by_one_per_success_when_used() -> None:
    lim = AIMDLimiter(4, 1, 100)
    for i in range(4):
        lim.on_success(now=float(i), latency_s=1.0, inflight=4)
    assert lim.limit == 8
    assert lim.slow_start


def test_no_growth_when_app_limited() -> None:
    lim = AIMDLimiter(10, 1, 100)
    for i in range(50):
        lim.on_success(now=float(i), latency_s=1.0, inflight=1)
    assert lim.limit == 10


def test_congestion_ends_slow_start_and_decreases_multiplicatively() -> None:
    lim = AIMDLimiter(100, 1, 1000)
    assert lim.on_congestion(now=10.0)
    assert lim.limit == 70
    assert not lim.slow_start
    # additive increase afterwards: +1 per ~limit successes
    for i in range(75):
        lim.on_success(now=20.0 + i, latency_s=1.0, inflight=70)
    assert lim.limit == 71


def test_one_decrease_per_round_trip() -> None:
    lim = AIMDLimiter(100, 1, 1000)
    lim.on_success(now=0.0, latency_s=2.0, inflight=100)  # rtt estimate 2 s
    assert lim.on_congestion(now=10.0)
    assert not lim.on_congestion(now=10.5)  # same window: one signal
    assert lim.on_congestion(now=13.0)
    assert lim.decreases == 2


def test_floor_and_ceiling() -> None:
    lim = AIMDLimiter(3, 2, 5)
    for i in range(20):
        lim.on_congestion(now=float(i))
    assert lim.limit == 2
    lim2 = AIMDLimiter(4, 1, 5)
    for i in range(20):
        lim2.on_success(now=float(i), latency_s=0.1, inflight=5)
    assert lim2.limit == 5
    assert AIMDLimiter(10_000, 1, 64).limit == 64


def test_retry_after_blocks_until_then() -> None:
    lim = AIMDLimiter(10, 1, 100)
    lim.on_congestion(now=100.0, retry_after_s=3.0)
    assert lim.blocked(102.9)
    assert not lim.blocked(103.0)


def test_latency_gradient_is_congestion() -> None:
    lim = AIMDLimiter(50, 1, 100, latency_tolerance=2.0)
    t = 0.0
    for _ in range(LATENCY_MIN_SAMPLES):
        t += 1
        assert not lim.on_success(now=t, latency_s=1.0, inflight=10, tokens=100)
    decreased = False
    for _ in range(50):
        t += 1
        decreased = decreased or lim.on_success(now=t, latency_s=5.0, inflight=10, tokens=100)
    assert decreased
    assert lim.limit < 50


def test_latency_per_token_not_per_request() -> None:
    lim = AIMDLimiter(50, 1, 100)
    t = 0.0
    for i in range(100):
        t += 1
        tokens = 10 if i % 2 else 1000  # long answers take longer: not congestion
        assert not lim.on_success(now=t, latency_s=tokens * 0.01, inflight=1, tokens=tokens)


def test_queue_depth_holds_then_decreases() -> None:
    lim = AIMDLimiter(10, 1, 100)
    assert not lim.on_queue_depth(now=0.0, waiting=5)
    lim.on_success(now=1.0, latency_s=0.1, inflight=10)
    assert lim.limit == 10  # a queue at the server: no growth
    assert lim.on_queue_depth(now=2.0, waiting=9)  # growing: decrease
    assert lim.limit == 7
    assert not lim.on_queue_depth(now=3.0, waiting=0)
    for i in range(10):
        lim.on_success(now=4.0 + i, latency_s=0.1, inflight=7)
    assert lim.limit == 8  # the queue drained: additive increase resumes


def test_adopt_skips_slow_start() -> None:
    lim = AIMDLimiter(32, 1, 100)
    lim.adopt(500)
    assert lim.limit == 100
    assert not lim.slow_start


def test_bad_bounds() -> None:
    with pytest.raises(ValueError, match="min_limit <= max_limit"):
        AIMDLimiter(5, 10, 2)
