"""Fault decisions. Pure: a function of the config and two uniform draws.

The draws come from one RNG per server seeded by the server's seed, consumed in
arrival order (two draws per request), *not* from the request's own RNG: a
retried request must get a fresh chance, or a 10% fail rate would fail the
same 10% of requests forever. A run is reproducible for a given arrival order.

The rates are bands of one draw: [0, fail) fails, then timeout, drop, garbage.
Rates that sum past 1 are clipped in that order.
"""

from __future__ import annotations

import random
from typing import Literal

from matrix_p2p.sim.config import SimConfig

Fault = Literal["none", "fail_429", "fail_503", "timeout", "drop", "garbage"]
FAULT_KINDS: tuple[Fault, ...] = ("fail_429", "fail_503", "timeout", "drop", "garbage")

FAULT_SEED_SALT = 0x5EED_FA17


def decide_fault(config: SimConfig, u: float, u_split: float) -> Fault:
    """The fault for a request given draws ``u`` and ``u_split`` in [0, 1)."""
    edge = config.fail_rate
    if u < edge:
        return "fail_429" if u_split < config.fail_429_fraction else "fail_503"
    edge += config.timeout_rate
    if u < edge:
        return "timeout"
    edge += config.drop_rate
    if u < edge:
        return "drop"
    edge += config.garbage_rate
    if u < edge:
        return "garbage"
    return "none"


class FaultDice:
    """The per-server fault RNG."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed ^ FAULT_SEED_SALT)

    def roll(self, config: SimConfig) -> Fault:
        return decide_fault(config, self._rng.random(), self._rng.random())
