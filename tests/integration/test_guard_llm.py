"""Guards of the LLM client (``make mutate`` breaks each):

- ``llm_breaker_counts_only_health_failures``: 5xx (not 503) opens an endpoint's breaker;
  429, 503 and other 4xx are answers from a live server (capacity or request problems)
  that never eject it and end a failure streak;
- ``llm_breaker_ignores_our_own_bugs``: an exception in our own request code says
  nothing about the server: the endpoint stays in;
- ``llm_backoff_between_retries``: a failed call is retried at once on an endpoint it has
  not tried yet, and after a jittered exponential backoff (growing with the retry number)
  when every endpoint has failed it.

Sleeps and the jitter's random source are injected: the delays are compared exactly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from matrix_p2p.backoff import Backoff
from matrix_p2p.llm import LLMClient, LLMError, LLMResponse
from matrix_p2p.llm import client as client_mod
from matrix_p2p.llm.breaker import CircuitBreaker
from matrix_p2p.llm.limiter import AIMDLimiter
from matrix_p2p.llm.outcomes import Outcomes
from matrix_p2p.llm.pool import Endpoint
from tests.integration.test_llm_client import MSGS, FakeOpenAI, cfg, status


def endpoint() -> Endpoint:
    return Endpoint(url="http://e", limiter=AIMDLimiter(8, 1, 100), breaker=CircuitBreaker(2, 5.0))


def answer(o: Outcomes, ep: Endpoint, code: int) -> None:
    o.answer(ep, code, b"no", None, now=0.0, latency=0.1, model="m", attempt=1)


def test_guard_llm_breaker_counts_only_health_failures() -> None:
    o = Outcomes(clock=lambda: 0.0, wall_clock=lambda: 0.0, publish=lambda ep, urgent: None)
    for code in (429, 503, 400, 404):
        ep = endpoint()
        for _ in range(3):
            answer(o, ep, code)
        assert ep.breaker.healthy, f"HTTP {code} ejected a live server"
    ep = endpoint()
    for code in (500, 429, 500, 400, 502, 503):  # each answer ends the streak
        answer(o, ep, code)
    assert ep.breaker.healthy, "an answer from the server did not end its failure streak"
    answer(o, ep, 500)
    answer(o, ep, 502)
    assert not ep.breaker.healthy, "two 5xx in a row did not eject the endpoint"
    b = CircuitBreaker(2, 5.0)
    b.on_failure(0.0)
    b.on_answered(0.1)
    b.on_failure(0.2)
    assert b.state == "closed"


async def test_guard_llm_breaker_ignores_our_own_bugs(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(body: object) -> bytes:
        raise RuntimeError("a bug in our request code")

    monkeypatch.setattr(client_mod.wire, "encode", broken)
    async with LLMClient(cfg("http://127.0.0.1:9/v1", model="m", breaker_failures=2,
                             max_retries=0)) as client:
        for _ in range(3):
            r = await client.chat(MSGS)
            assert isinstance(r, LLMError) and "a bug in our request code" in r.message
        assert next(iter(client.snapshot())).healthy


@pytest.fixture(params=[1, 2])
async def fleet(request: pytest.FixtureRequest) -> AsyncIterator[list[FakeOpenAI]]:
    started = []
    for _ in range(request.param):
        s = FakeOpenAI()
        await s.start()
        started.append(s)
    yield started
    for s in started:
        await s.stop()


async def test_guard_llm_backoff_between_retries(fleet: list[FakeOpenAI]) -> None:
    replicas = len(fleet)
    for s in fleet:
        s.script.extend([status(500)] * (2 // replicas))  # two failures in all, then answers
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    policy = Backoff(1.0, 8.0, rng=lambda: 0.5)
    c = cfg(*(s.url for s in fleet), backoff_base_s=1.0, backoff_cap_s=8.0, max_retries=3,
            breaker_failures=5, sticky=False, model="m")
    async with LLMClient(c, sleep=sleep, rng=lambda: 0.5) as client:
        r = await client.chat(MSGS)
    assert isinstance(r, LLMResponse) and r.attempts == 3
    if replicas == 1:  # after each failure: the only endpoint, after a backoff
        assert slept == [policy.delay(0), policy.delay(1)] == [0.75, 1.5]
    else:  # the other endpoint at once; once both failed, a backoff
        assert slept == [policy.delay(1)] == [1.5]
