"""Guards of the sandbox service and its client (``make mutate`` breaks each):

- ``expired_lease_reclaimed_by_the_service``: the service's own maintenance reclaims a
  lease whose TTL ran out (its task's worker died) and gives the slot to the next
  acquire, with nobody calling ``reap``;
- ``sandbox_client_honours_retry_after``: an exhausted pool's ``Retry-After`` is counted
  from when the request was sent (the server long-polled for part of it);
- ``sandbox_breaker_counts_only_server_failures``: 5xx other than 503 open the
  client's breaker; 503 (a full pool) and 4xx are answers from a live server that end a
  failure streak and close a half-open breaker.

Clocks and sleeps are injected: nothing here waits on wall time for a decision.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from matrix_p2p.backoff import Backoff
from matrix_p2p.sandbox import (
    SandboxClient,
    SandboxConfig,
    SandboxError,
    SandboxService,
    SandboxUnavailable,
)


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


async def test_guard_expired_lease_reclaimed_by_the_service() -> None:
    clock = Clock()
    cfg = SandboxConfig(pool_size=1, ttl_s=30, reap_interval_s=0.05)
    async with SandboxService(cfg, clock=clock) as svc:
        doomed = await svc.acquire("doomed")
        clock.now += 31  # its worker died: nobody renews it
        try:
            # the maintenance loop turns every 0.05 s: the slot is free again long before 5 s
            async with asyncio.timeout(5):
                nxt = await svc.acquire("next", wait_s=60)
        except TimeoutError:
            raise AssertionError(f"the expired lease was not reclaimed, nor its slot rebuilt, "
                                 f"by the service itself: {svc.status()}") from None
        assert nxt.slot == doomed.slot and nxt.id != doomed.id
        status = svc.status()
        assert status["reclaimed"] == 1 and status["leased"] == 1


Reply = tuple[int, dict[str, str], bytes]
LEASE = b'{"lease": "L1", "expires_at": 123.0, "ttl_s": 30.0}'


class FakeSandboxServer:
    """Answers the sandbox verbs from a script (then with a lease); each request first
    moves the client's clock by ``held_s`` (a long poll on the server)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.script: deque[Reply] = deque()
        self.held_s = 0.0
        self.requests = 0
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.clock.now += self.held_s
        status, headers, body = self.script.popleft() if self.script else (200, {}, LEASE)
        return web.Response(status=status, headers=headers, body=body,
                            content_type="application/json")

    async def start(self) -> str:
        app = web.Application()
        for verb in ("acquire", "release", "renew", "execute"):
            app.router.add_post(f"/{verb}", self.handle)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeSandboxServer, str]]:
    server = FakeSandboxServer(Clock())
    url = await server.start()
    yield server, url
    assert server.server is not None
    await server.server.close()


def full(retry_after: str | None = None) -> Reply:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return 503, headers, b'{"error": "sandbox pool exhausted"}'


async def test_guard_sandbox_client_honours_retry_after(
        fake: tuple[FakeSandboxServer, str]) -> None:
    server, url = fake
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        server.clock.now += s

    server.script.append(full("3"))
    server.held_s = 1.0
    client = SandboxClient(url, clock=server.clock, sleep=sleep,
                           backoff=Backoff(0.2, 5.0, rng=lambda: 0.0))
    async with client:
        lease = await client.acquire("t", timeout_s=60)
    assert lease.id == "L1"
    # Retry-After 3 s, of which the server held the request 1 s: 2 s more, not 3, not a backoff
    assert slept == [2.0]


async def test_guard_sandbox_breaker_counts_only_server_failures(
        fake: tuple[FakeSandboxServer, str]) -> None:
    server, url = fake
    client = SandboxClient(url, clock=server.clock, breaker_failures=2, breaker_cooldown_s=5.0)
    gone = (404, {}, b'{"error": "unknown lease"}')
    broken = (500, {}, b'{"error": "boom"}')
    async with client:
        server.script.extend([full(), full(), full()])
        for _ in range(3):  # a full pool is an answer from a live server
            with pytest.raises(SandboxUnavailable, match="sandbox pool exhausted"):
                await client.release("L1")
        assert client.breaker.state == "closed"
        server.script.extend([broken, gone, broken])  # an answer ends the failure streak
        for expect in (SandboxError, None, SandboxError):
            if expect is None:
                assert await client.release("L1") is False
            else:
                with pytest.raises(expect, match="boom"):
                    await client.release("L1")
        assert client.breaker.state == "closed"
        server.script.append(broken)  # the second failure in a row: the server is down
        with pytest.raises(SandboxError, match="boom"):
            await client.release("L1")
        assert client.breaker.state == "open"
        asked = server.requests
        with pytest.raises(SandboxUnavailable, match="circuit open"):
            await client.release("L1")
        assert server.requests == asked  # nothing sent while open
        server.clock.now += 5.0  # the cooldown: one probe goes through, and a 404 is an answer
        server.script.append(gone)
        assert await client.release("L1") is False
        assert client.breaker.state == "closed"
