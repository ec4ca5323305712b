"""Fault decisions."""

from __future__ import annotations

from collections import Counter

from matrix_p2p.sim.config import SimConfig
from matrix_p2p.sim.faults import FaultDice, decide_fault


def _roll(config: SimConfig, n: int = 1000, seed: int = 0) -> Counter[str]:
    dice = FaultDice(seed)
    return Counter(dice.roll(config) for _ in range(n))


def test_rate_zero_never_faults() -> None:
    assert _roll(SimConfig()) == Counter({"none": 1000})


def test_rate_one_always_faults() -> None:
    assert _roll(SimConfig(timeout_rate=1.0)) == Counter({"timeout": 1000})
    assert _roll(SimConfig(drop_rate=1.0)) == Counter({"drop": 1000})
    assert _roll(SimConfig(garbage_rate=1.0)) == Counter({"garbage": 1000})
    assert _roll(SimConfig(fail_rate=1.0, fail_429_fraction=1.0)) == Counter({"fail_429": 1000})
    assert _roll(SimConfig(fail_rate=1.0, fail_429_fraction=0.0)) == Counter({"fail_503": 1000})


def test_fail_split_and_rates() -> None:
    counts = _roll(SimConfig(fail_rate=0.4, drop_rate=0.1), n=10_000)
    assert 1800 < counts["fail_429"] < 2200
    assert 1800 < counts["fail_503"] < 2200
    assert 800 < counts["drop"] < 1200


def test_bands_are_ordered_and_clipped() -> None:
    config = SimConfig(fail_rate=0.5, timeout_rate=0.5, drop_rate=1.0)
    assert decide_fault(config, 0.49, 0.9) == "fail_503"
    assert decide_fault(config, 0.5, 0.0) == "timeout"
    assert decide_fault(config, 0.999, 0.0) == "timeout"


def test_same_seed_same_sequence() -> None:
    config = SimConfig(fail_rate=0.3, garbage_rate=0.3)
    a, b = FaultDice(1), FaultDice(1)
    assert [a.roll(config) for _ in range(100)] == [b.roll(config) for _ in range(100)]
