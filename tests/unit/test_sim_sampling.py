"""Token counting, output length distributions and per-request determinism."""

from __future__ import annotations

import random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matrix_p2p.sim.answer import plan_answer
from matrix_p2p.sim.config import SimConfig
from matrix_p2p.sim.protocol import parse_request
from matrix_p2p.sim.sampling import (
    cap_output_tokens,
    draw_output_tokens,
    prompt_tokens,
    request_rng,
)


def _chat(content: str, **extra: object) -> bytes:
    return msgspec.json.encode(
        {"model": "m", "messages": [{"role": "user", "content": content}], **extra}
    )


def test_prompt_tokens_are_chars_over_four() -> None:
    assert prompt_tokens("") == 1
    assert prompt_tokens("abcd") == 1
    assert prompt_tokens("abcde") == 2
    req = parse_request(_chat("x" * 40), "chat", "m")
    assert plan_answer(SimConfig(), req).prompt_tokens == 10 + 4


def test_same_request_same_answer_and_usage() -> None:
    config = SimConfig(seed=7)
    req = parse_request(_chat("What is 2+2? Answer: <letter>\nA) 3\nB) 4"), "chat", "m")
    assert plan_answer(config, req) == plan_answer(config, req)


def test_key_order_in_body_does_not_matter() -> None:
    a = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    b = b'{"messages":[{"content":"hi","role":"user"}],"model":"m"}'
    config = SimConfig()
    assert plan_answer(config, parse_request(a, "chat", "m")) == plan_answer(
        config, parse_request(b, "chat", "m")
    )


def test_different_seed_or_prompt_changes_the_answer() -> None:
    req = parse_request(_chat("hello there"), "chat", "m")
    answers = {plan_answer(SimConfig(seed=s), req).text for s in range(5)}
    assert len(answers) == 5
    other = parse_request(_chat("hello there!"), "chat", "m")
    assert plan_answer(SimConfig(), other).text != plan_answer(SimConfig(), req).text
    seeded = parse_request(_chat("hello there", seed=3), "chat", "m")
    assert plan_answer(SimConfig(), seeded).text != plan_answer(SimConfig(), req).text


def test_max_tokens_caps_with_length_finish() -> None:
    config = SimConfig(output_tokens="fixed", output_tokens_mean=50)
    capped = plan_answer(config, parse_request(_chat("hi", max_tokens=8), "chat", "m"))
    assert (capped.completion_tokens, capped.finish_reason) == (8, "length")
    assert len(capped.text.split()) == 8
    free = plan_answer(config, parse_request(_chat("hi", max_tokens=80), "chat", "m"))
    assert (free.completion_tokens, free.finish_reason) == (50, "stop")
    assert cap_output_tokens(5, None) == (5, "stop")


@settings(deadline=None)
@given(
    dist=st.sampled_from(["fixed", "uniform", "lognormal"]),
    mean=st.floats(0.5, 5000),
    sigma=st.floats(0, 3),
    lo=st.integers(1, 100),
    span=st.integers(0, 1000),
    seed=st.integers(0, 2**32),
)
def test_draws_are_clipped_to_min_max(
    dist: str, mean: float, sigma: float, lo: int, span: int, seed: int
) -> None:
    config = msgspec.convert(
        {
            "output_tokens": dist,
            "output_tokens_mean": mean,
            "output_tokens_sigma": sigma,
            "output_tokens_min": lo,
            "output_tokens_max": lo + span,
        },
        SimConfig,
    )
    n = draw_output_tokens(config, random.Random(seed))
    assert lo <= n <= lo + span


def test_lognormal_mean_is_close_to_configured_mean() -> None:
    config = SimConfig(output_tokens_mean=64, output_tokens_sigma=0.5, output_tokens_max=10_000)
    rng = request_rng(0, "m", "p", None, None)
    draws = [draw_output_tokens(config, rng) for _ in range(5000)]
    assert sum(draws) / len(draws) == pytest.approx(64, rel=0.05)
    assert len(set(draws)) > 20


def test_fixed_and_uniform() -> None:
    rng = random.Random(0)
    assert draw_output_tokens(SimConfig(output_tokens="fixed", output_tokens_mean=33), rng) == 33
    uni = SimConfig(output_tokens="uniform", output_tokens_min=3, output_tokens_max=5)
    assert {draw_output_tokens(uni, rng) for _ in range(200)} == {3, 4, 5}
