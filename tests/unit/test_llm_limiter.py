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


def test_queue_depth_holds_then_gives_back_half_the_excess() -> None:
    lim = AIMDLimiter(40, 1, 100)  # queue target 8
    assert not lim.on_queue_depth(now=0.0, waiting=12)  # over target, under twice it
    lim.on_success(now=1.0, latency_s=0.1, inflight=40)
    assert lim.limit == 40  # a queue over target: no growth
    assert not lim.on_queue_depth(now=2.0, waiting=28)  # one poll over: maybe noise
    assert lim.on_queue_depth(now=3.0, waiting=28)  # a standing queue: 20 over target
    assert lim.limit == 30
    assert not lim.on_queue_depth(now=4.0, waiting=0)
    for i in range(30):
        lim.on_success(now=5.0 + i, latency_s=0.1, inflight=30)
    # the queue drained, so there is room: +4 per round trip (30 successes ~ one round trip)
    assert lim.limit == 33


def test_a_queue_within_target_keeps_growing() -> None:
    # a few waiting requests keep the server's batch full: that is the goal, not congestion
    lim = AIMDLimiter(100, 1, 1000)
    lim.on_congestion(now=0.0)  # leave slow start: additive increase
    start = lim.limit
    lim.on_queue_depth(now=1.0, waiting=lim.queue_target())
    for i in range(200):
        lim.on_success(now=2.0 + i, latency_s=1.0, inflight=lim.limit)
    assert lim.limit > start
    lim.on_queue_depth(now=300.0, waiting=lim.queue_target() + 1)
    held = lim.limit
    for i in range(50):
        lim.on_success(now=301.0 + i, latency_s=1.0, inflight=lim.limit)
    assert lim.limit == held


def test_full_batch_decode_slowdown_is_not_congestion() -> None:
    # continuous batching: time per token grows ~5x from an empty to a full batch
    lim = AIMDLimiter(8, 1, 1000)
    t = 0.0
    for i in range(400):
        t += 0.1
        slowdown = 1 + 4 * min(1.0, i / 200)
        assert not lim.on_success(now=t, latency_s=0.004 * 64 * slowdown, inflight=lim.limit,
                                  tokens=64)
    assert lim.limit > 300


def test_recovery_after_an_overshoot_episode_is_fast() -> None:
    lim = AIMDLimiter(512, 1, 2048)
    t = 0.0
    lim.on_success(now=t, latency_s=1.0, inflight=512)  # rtt ~1 s
    for _ in range(4):  # a slow-start overshoot: 429s over four round trips
        t += 1.5
        assert lim.on_congestion(now=t)
    low = lim.limit
    assert low < 150
    # back up at slow-start speed (+1 per success) to 0.7 x the episode's peak ...
    successes = 0
    while lim.limit < int(512 * 0.7) and successes < 1000:
        t += 0.01
        lim.on_success(now=t, latency_s=1.0, inflight=lim.limit)
        successes += 1
    assert successes <= int(512 * 0.7) - low + 1
    # ... then additive increase
    before = lim.limit
    for _ in range(100):
        t += 0.01
        lim.on_success(now=t, latency_s=1.0, inflight=lim.limit)
    assert before <= lim.limit <= before + 1


def test_adopt_skips_slow_start() -> None:
    lim = AIMDLimiter(32, 1, 100)
    lim.adopt(500)
    assert lim.limit == 100
    assert not lim.slow_start


def test_bad_bounds() -> None:
    with pytest.raises(ValueError, match="min_limit <= max_limit"):
        AIMDLimiter(5, 10, 2)
