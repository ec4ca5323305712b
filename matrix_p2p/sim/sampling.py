"""Deterministic per-request randomness and token counting. Pure: no I/O.

Counting rules (the simulator's own, documented so tests and benchmarks agree):

- prompt tokens = ``ceil(len(text) / 4)`` (at least 1) of the prompt text; for
  chat, the text is the messages' contents joined by newlines, plus 4 tokens
  per message for the chat template. Four characters per token is close to
  what BPE tokenizers give for English.
- output tokens: one token = one whitespace-separated word of the answer.

The RNG of a request is seeded from (server seed, a BLAKE2 hash of the model,
the messages or prompt, ``max_tokens`` and the body's ``seed``), so the same
request gets the same answer whatever the arrival order or concurrency.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Any

import msgspec

from matrix_p2p.sim.config import SimConfig

_encoder = msgspec.json.Encoder(order="sorted")


def request_rng(
    seed: int, model: str, payload: Any, max_tokens: int | None, body_seed: int | None
) -> random.Random:
    """The RNG for one request; ``payload`` is the messages list or the prompt."""
    key = _encoder.encode([seed, model, payload, max_tokens, body_seed])
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def prompt_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def draw_output_tokens(config: SimConfig, rng: random.Random) -> int:
    """One draw from the configured distribution, clipped to [min, max]."""
    lo, hi = config.output_tokens_min, config.output_tokens_max
    if config.output_tokens == "fixed":
        n = round(config.output_tokens_mean)
    elif config.output_tokens == "uniform":
        n = rng.randint(lo, hi)
    else:
        # mu chosen so that the (unclipped) distribution's mean is output_tokens_mean.
        sigma = config.output_tokens_sigma
        mu = math.log(config.output_tokens_mean) - sigma * sigma / 2
        n = round(rng.lognormvariate(mu, sigma))
    return min(hi, max(lo, n))


def cap_output_tokens(drawn: int, max_tokens: int | None) -> tuple[int, str]:
    """Apply the request's ``max_tokens``: (tokens, finish_reason)."""
    if max_tokens is not None and drawn > max_tokens:
        return max(max_tokens, 1), "length"
    return drawn, "stop"
