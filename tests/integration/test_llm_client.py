"""LLMClient against a tiny fake OpenAI server (aiohttp.web on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from matrix_p2p.llm import (
    EndpointState,
    InMemoryFleetState,
    LLMClient,
    LLMConfig,
    LLMError,
    LLMResponse,
)

Reply = Callable[[web.Request], Awaitable[web.StreamResponse]]
MSGS = [{"role": "user", "content": "hi"}]


def ok_body(text: str = "hello", prompt: int = 3, completion: int = 5) -> dict[str, Any]:
    return {
        "model": "fake-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
    }


class FakeOpenAI:
    """Answers chat/completions; ``script`` replies come first, then ``default``."""

    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.delay = 0.0
        self.requests = 0
        self.request_times: list[float] = []
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.inflight = 0
        self.max_inflight = 0
        self.release = asyncio.Event()  # set at teardown: hung handlers return
        self.server: TestServer | None = None
        self.waiting: list[float] = []  # /metrics queue depth per poll; empty: 404
        self.metrics_polls = 0
        self.arrived = asyncio.Event()
        self.metrics_done = asyncio.Event()
        self.port: int | None = None

    @property
    def url(self) -> str:
        assert self.port is not None
        return f"http://127.0.0.1:{self.port}/v1"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        app.router.add_post("/v1/completions", self.handle)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def start(self, port: int | None = None) -> None:
        self.server = TestServer(self.app(), host="127.0.0.1", port=port)
        await self.server.start_server()
        self.port = self.server.port

    async def stop(self) -> None:
        self.release.set()
        if self.server is not None:
            await self.server.close()
            self.server = None

    async def metrics(self, request: web.Request) -> web.Response:
        if not self.waiting:
            raise web.HTTPNotFound()
        self.metrics_polls += 1
        value = self.waiting[min(self.metrics_polls, len(self.waiting)) - 1]
        if self.metrics_polls == len(self.waiting):
            self.metrics_done.set()
        return web.Response(
            text=f'vllm:num_requests_waiting{{model_name="fake-model"}} {value}\n'
        )

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model"}]})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.arrived.set()
        self.request_times.append(time.monotonic())
        self.auth.append(request.headers.get("Authorization"))
        self.bodies.append(await request.json())
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.script:
                return await self.script.popleft()(request)
            if self.delay:
                await asyncio.sleep(self.delay)
            if request.path.endswith("/v1/completions"):
                body = ok_body()
                body["choices"] = [{"index": 0, "text": "done", "finish_reason": "length"}]
                return web.json_response(body)
            return web.json_response(ok_body())
        finally:
            self.inflight -= 1


def status(code: int, headers: dict[str, str] | None = None, text: str = "no") -> Reply:
    async def reply(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, text=text, headers=headers)

    return reply


def hang(server: FakeOpenAI) -> Reply:
    async def reply(request: web.Request) -> web.StreamResponse:
        await server.release.wait()
        return web.json_response(ok_body())

    return reply


@pytest.fixture
async def servers() -> AsyncIterator[Callable[[], Awaitable[FakeOpenAI]]]:
    started: list[FakeOpenAI] = []

    async def make() -> FakeOpenAI:
        s = FakeOpenAI()
        await s.start()
        started.append(s)
        return s

    yield make
    for s in started:
        await s.stop()


def cfg(*urls: str, **kw: Any) -> LLMConfig:
    base: dict[str, Any] = {"backoff_base_s": 0.01, "backoff_cap_s": 0.05, "timeout_s": 5.0}
    base.update(kw)
    return LLMConfig(endpoints=list(urls), **base)


def stats(client: LLMClient, server: FakeOpenAI) -> Any:
    url = server.url.removesuffix("/v1")
    return next(s for s in client.snapshot() if s.url == url)


async def test_success_and_usage_accounting(
    servers: Callable[[], Awaitable[FakeOpenAI]], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await servers()
    monkeypatch.setenv("TEST_LLM_KEY", "sk-secret")
    async with LLMClient(cfg(s.url, api_key_env="TEST_LLM_KEY")) as client:
        r = await client.chat(MSGS, role="teacher", max_tokens=16, temperature=0.5, top_p=0.9)
        r2 = await client.complete("once upon", role="judge", max_tokens=4)
        r3 = await client.chat(MSGS, role="teacher")
    assert isinstance(r, LLMResponse)
    assert r.text == "hello"
    assert (r.prompt_tokens, r.completion_tokens) == (3, 5)
    assert r.model == "fake-model"
    assert r.finish_reason == "stop"
    assert isinstance(r2, LLMResponse)
    assert r2.text == "done"
    assert r3.ok
    # model discovered from /v1/models; extra body passed through
    assert s.bodies[0]["model"] == "fake-model"
    assert s.bodies[0]["top_p"] == 0.9
    assert s.bodies[0]["max_tokens"] == 16
    assert s.auth == ["Bearer sk-secret"] * 3
    by_role = client.usage_by_role()
    assert by_role["teacher"].completion_tokens == 10
    assert by_role["judge"].prompt_tokens == 3
    assert client.usage_by_endpoint()[s.url.removesuffix("/v1")].completion_tokens == 15
    assert client.total_completion_tokens == 15


async def test_no_auth_header_without_key(
    servers: Callable[[], Awaitable[FakeOpenAI]], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await servers()
    monkeypatch.delenv("TEST_LLM_KEY", raising=False)
    async with LLMClient(cfg(s.url, api_key_env="TEST_LLM_KEY", model="m")) as client:
        assert (await client.chat(MSGS)).ok
    assert s.auth == [None]
    assert s.bodies[0]["model"] == "m"


async def test_429_retry_after_then_success(
    servers: Callable[[], Awaitable[FakeOpenAI]],
) -> None:
    s = await servers()
    s.script.append(status(429, {"Retry-After": "0.3"}))
    async with LLMClient(cfg(s.url, initial_limit=10)) as client:
        r = await client.chat(MSGS)
        st = stats(client, s)
    assert isinstance(r, LLMResponse)
    assert r.attempts == 2
    assert st.rejected_429 == 1
    assert st.limit == 7  # 10 * 0.7
    # the endpoint got no request until Retry-After had passed
    assert s.request_times[1] - s.request_times[0] >= 0.29


async def test_503_storm_reduces_limit_without_ejecting(
    servers: Callable[[], Awaitable[FakeOpenAI]],
) -> None:
    s = await servers()
    for _ in range(200):
        s.script.append(status(503))
    async with LLMClient(cfg(s.url, initial_limit=32, max_retries=1)) as client:
        results = await asyncio.gather(*(client.chat(MSGS) for _ in range(40)))
        st = stats(client, s)
    assert all(isinstance(r, LLMError) and r.kind == "unavailable" for r in results)
    assert st.limit < 32
    assert st.healthy  # 503 is a capacity signal, not a health one
    assert st.limit_violations == 0


class ManualClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def test_dead_endpoint_ejected_then_reprobed_and_recovered(
    servers: Callable[[], Awaitable[FakeOpenAI]],
) -> None:
    a, b = await servers(), await servers()
    port = a.port
    clock = ManualClock()
    c = cfg(a.url, b.url, breaker_failures=2, breaker_cooldown_s=5.0, sticky=False)
    with capture_logs() as logs:
        async with LLMClient(c, clock=clock) as client:
            await a.stop()  # connection refused from now on
            for _ in range(6):
                r = await client.chat(MSGS)
                assert r.ok, r
            sa = stats_url(client, port)
            assert not sa.healthy
            assert sa.errors_by_kind == {"unavailable": 2}
            assert b.requests == 6
            # the replica comes back on the same port; after the cooldown one
            # request probes it and closes the breaker
            await a.start(port=port)
            clock.t += 5.0
            r = await client.chat(MSGS)
            assert isinstance(r, LLMResponse)
            assert r.endpoint == f"http://127.0.0.1:{port}"
            assert stats_url(client, port).healthy
            assert (await client.chat(MSGS)).ok
    events = [e["event"] for e in logs]
    assert events.count("llm.endpoint_ejected") == 1
    assert events.count("llm.endpoint_recovered") == 1
    assert a.requests == 2


def stats_url(client: LLMClient, port: int | None) -> Any:
    return next(s for s in client.snapshot() if s.url == f"http://127.0.0.1:{port}")


async def test_all_endpoints_dead_is_no_endpoints(
    servers: Callable[[], Awaitable[FakeOpenAI]],
) -> None:
    a = await servers()
    await a.stop()
    clock = ManualClock()
    async with LLMClient(cfg(a.url, breaker_failures=2, max_retries=3), clock=clock) as client:
        r = await client.chat(MSGS)
    assert isinstance(r, LLMError)
    assert r.kind == "no_endpoints"
    assert r.transient


async def test_timeout(servers: Callable[[], Awaitable[FakeOpenAI]]) -> None:
    s = await servers()
    s.script.append(hang(s))
    async with LLMClient(cfg(s.url, timeout_s=0.2, max_retries=0)) as client:
        r = await client.chat(MSGS)
    assert isinstance(r, LLMError)
    assert r.kind == "timeout"


async def test_400_is_bad_request_not_retried(
    servers: Callable[[], Awaitable[FakeOpenAI]],
) -> None:
    s = await servers()
    s.script.append(status(400, text='{"error": "context too long"}'))
    async with LLMClient(cfg(s.url)) as client:
        r = await client.chat(MSGS)
    assert isinstance(r, LLMError)
    assert r.kind == "bad_request"
    assert r.status == 400
    assert "context too long" in r.message
    assert r.attempts == 1
    assert s.requests == 1
    with pytest.raises(Exception, match="bad_request"):
        r.unwrap()


async def test_garbage_is_bad_response_retried_once(
    servers: Callable[[], Awaitable[FakeOpenAI]],
) -> None:
    s = await servers()
    s.script.extend([status(200, text="<html>oops"), status(200, text='{"choices": []}')])
    async with LLMClient(cfg(s.url, max_retries=4)) as client:
        r = await client.chat(MSGS)
    assert isinstance(r, LLMError)
    assert r.kind == "bad_response"
    assert "no choices" in r.message
    assert r.attempts == 2
    assert s.requests == 2


async def test_2000_concurrent_chats_respect_the_limit(
    servers: Callable[[], Awaitable[FakeOpenAI]],
) -> None:
    s = await servers()
    s.delay = 0.1
    async with LLMClient(cfg(s.url, initial_limit=200, max_limit=1500, timeout_s=30)) as client:
        results = await asyncio.gather(
            *(client.chat(MSGS, sticky_key=f"t{i}") for i in range(2000))
        )
        st = stats(client, s)
    assert all(r.ok for r in results)
    assert st.limit_violations == 0
    assert st.successes == 2000
    assert st.max_inflight_seen <= 1500
    assert s.max_inflight > 100  # more than aiohttp's default connector allows
    assert client.total_completion_tokens == 2000 * 5


async def test_sticky_routing_holds(servers: Callable[[], Awaitable[FakeOpenAI]]) -> None:
    a, b = await servers(), await servers()
    async with LLMClient(cfg(a.url, b.url)) as client:
        first = await client.chat(MSGS, sticky_key="task-1")
        assert isinstance(first, LLMResponse)
        other = await client.chat(MSGS, sticky_key="task-2")
        for _ in range(5):
            r = await client.chat(MSGS, sticky_key="task-1")
            assert isinstance(r, LLMResponse)
            assert r.endpoint == first.endpoint
        assert other.ok
        assert client.sticky_hits == 5
        assert client.sticky_misses == 0


async def test_endpoints_file_reload(
    servers: Callable[[], Awaitable[FakeOpenAI]], tmp_path: Path
) -> None:
    a, b = await servers(), await servers()
    f = tmp_path / "endpoints.txt"
    f.write_text(f"# fleet\n{a.url}\n")
    c = cfg(endpoints_file=str(f), endpoints_poll_s=0.02)
    async with LLMClient(c) as client:
        r = await client.chat(MSGS)
        assert isinstance(r, LLMResponse)
        assert r.endpoint == a.url.removesuffix("/v1")
        f.write_text(f"{b.url}  # replaced a\n")
        st = os.stat(f)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        want = [b.url.removesuffix("/v1")]
        async with asyncio.timeout(5):
            while client.endpoints() != want:
                await client.wait_endpoints_changed()
        for _ in range(3):
            r = await client.chat(MSGS)
            assert isinstance(r, LLMResponse)
            assert r.endpoint == want[0]
        assert stats(client, a).removed
    assert a.requests == 1


async def test_fleet_429_backs_off_other_clients(
    servers: Callable[[], Awaitable[FakeOpenAI]],
) -> None:
    x, y = await servers(), await servers()
    x.script.append(status(429, {"Retry-After": "30"}))
    fleet = InMemoryFleetState()
    x_url = x.url.removesuffix("/v1")
    got_429 = asyncio.Event()

    def on_state(url: str, st: EndpointState) -> None:
        if url == x_url and st.retry_after_until > 0:
            got_429.set()

    fleet.subscribe(on_state)
    with capture_logs() as logs:
        async with (
            LLMClient(cfg(x.url, initial_limit=20), fleet=fleet, worker_id="A") as a,
            LLMClient(cfg(x.url, y.url), fleet=fleet, worker_id="B") as b,
        ):
            r = await a.chat(MSGS)
            assert isinstance(r, LLMError)
            assert r.kind == "rate_limited"
            assert r.retry_after_s is not None
            assert r.retry_after_s > 20
            async with asyncio.timeout(5):
                await got_429.wait()
            for _ in range(5):
                rb = await b.chat(MSGS, sticky_key="k")
                assert isinstance(rb, LLMResponse)
                assert rb.endpoint == y.url.removesuffix("/v1")
            # a worker that joins later starts from the fleet's learned limit
            async with LLMClient(cfg(x.url), fleet=fleet, worker_id="C") as c:
                assert stats(c, x).limit == 14
                rc = await c.chat(MSGS)
                assert isinstance(rc, LLMError)
                assert rc.kind == "rate_limited"
    assert x.requests == 1
    assert any(e["event"] == "llm.endpoint_backoff" and e.get("reason") == "fleet" for e in logs)
    assert fleet.latest()[x_url].worker == "A"


async def test_closed_client_returns_error() -> None:
    client = LLMClient(cfg("http://127.0.0.1:9"))
    r = await client.chat(MSGS)
    assert isinstance(r, LLMError)
    assert r.kind == "no_endpoints"


async def test_a_standing_metrics_queue_decreases_limit(
    servers: Callable[[], Awaitable[FakeOpenAI]],
) -> None:
    s = await servers()
    s.waiting = [2.0, 9.0, 20.0, 24.0, 30.0]  # over twice the target (8) in consecutive polls
    async with LLMClient(cfg(s.url, initial_limit=40, metrics_poll_s=0.02)) as client:
        async with asyncio.timeout(5):
            await s.metrics_done.wait()
        assert stats(client, s).limit < 40



async def test_cancelled_calls_free_their_slot_and_queue_place(
    servers: Callable[[], Awaitable[FakeOpenAI]],
) -> None:
    s = await servers()
    s.script.append(hang(s))
    async with LLMClient(cfg(s.url, initial_limit=1, max_limit=1)) as client:
        first = asyncio.create_task(client.chat(MSGS))
        async with asyncio.timeout(5):
            await s.arrived.wait()
        queued = asyncio.create_task(client.chat(MSGS))
        await asyncio.sleep(0)  # let it join the queue (no synchronisation depends on it)
        queued.cancel()
        first.cancel()
        for t in (queued, first):
            with pytest.raises(asyncio.CancelledError):
                await t
        async with asyncio.timeout(5):
            r = await client.chat(MSGS)
        assert r.ok
        st = stats(client, s)
        assert st.inflight == 0
        assert st.max_inflight_seen == 1
        assert st.limit_violations == 0
