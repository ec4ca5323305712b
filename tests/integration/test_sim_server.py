"""A real simulator on a free port, spoken to by the official openai client and aiohttp."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable

import aiohttp
import openai
import pytest

from matrix_p2p.sim.config import SimConfig
from matrix_p2p.sim.server import SimServer, serve_forever, start_fleet, start_sim

FAST = SimConfig(step_base_s=0.001, step_per_seq_s=0.0, tokens_per_step=16)
CHOICE = "Pick one.\nA) red\nB) blue\nEnd with Answer: <letter>"
METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\} (\S+)$")


@pytest.fixture
async def srv() -> AsyncIterator[SimServer]:
    server = await start_sim(FAST)
    yield server
    await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def _eventually(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll server state under a deadline: the state has no event to wait on."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polling state that has no event
            await asyncio.sleep(0.005)


def _client(server: SimServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=10)


def _body(content: str = "hello", **extra: object) -> dict[str, object]:
    return {"model": "sim-model", "messages": [{"role": "user", "content": content}], **extra}


async def test_openai_chat_completion_and_models(srv: SimServer) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", srv.url)
    assert srv.port > 0
    async with _client(srv) as client:
        chat = await client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": CHOICE}]
        )
        text = chat.choices[0].message.content or ""
        assert text.splitlines()[-1] in ("Answer: A", "Answer: B")
        assert chat.object == "chat.completion"
        assert chat.model == "sim-model"
        assert chat.choices[0].finish_reason == "stop"
        assert chat.usage is not None
        assert chat.usage.completion_tokens == len(text.split())
        assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

        comp = await client.completions.create(model="sim-model", prompt="Once", max_tokens=3)
        assert comp.choices[0].finish_reason == "length"
        assert len(comp.choices[0].text.split()) == 3
        assert comp.usage is not None
        assert comp.usage.completion_tokens == 3

        models = await client.models.list()
        assert [m.id for m in models.data] == ["sim-model"]


async def test_openai_streaming_chat_with_usage(srv: SimServer) -> None:
    async with _client(srv) as client:
        stream = await client.chat.completions.create(
            model="sim-model",
            messages=[{"role": "user", "content": CHOICE}],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=40,
        )
        chunks = [c async for c in stream]
        plain = await client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": CHOICE}], max_tokens=40
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content  # streamed == non-streamed, deterministic
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage == plain.usage


async def test_streaming_completion_raw_sse(srv: SimServer, http: aiohttp.ClientSession) -> None:
    body = {"model": "m", "prompt": "tell", "max_tokens": 20, "stream": True}
    async with http.post(srv.url + "/completions", json=body) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = (await resp.read()).decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert len("".join(c["choices"][0]["text"] for c in chunks).split()) == 20
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_same_request_same_answer_over_http(
    srv: SimServer, http: aiohttp.ClientSession
) -> None:
    async def ask() -> dict[str, object]:
        async with http.post(srv.url + "/chat/completions", json=_body("same")) as resp:
            data: dict[str, object] = await resp.json()
            return data

    first, *rest = await asyncio.gather(*(ask() for _ in range(5)))
    assert all(r["choices"] == first["choices"] and r["usage"] == first["usage"] for r in rest)


async def test_health_metrics_and_stats(srv: SimServer, http: aiohttp.ClientSession) -> None:
    async with http.get(srv.base_url + "/health") as resp:
        assert resp.status == 200
        assert await resp.read() == b""
    async with http.post(srv.url + "/chat/completions", json=_body(max_tokens=5)) as resp:
        assert resp.status == 200
    async with http.get(srv.base_url + "/metrics") as resp:
        text = await resp.text()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = METRIC_LINE.match(line)
        assert match, line
        assert 'model_name="sim-model"' in match[2]
        samples[match[1]] = samples.get(match[1], 0.0) + float(match[3])
    assert samples["vllm:num_requests_running"] == 0
    assert samples["vllm:num_requests_waiting"] == 0
    assert samples["vllm:prompt_tokens_total"] > 0
    assert samples["vllm:generation_tokens_total"] == 5
    assert samples["vllm:request_success_total"] == 1
    async with http.get(srv.base_url + "/sim/stats") as resp:
        stats = await resp.json()
    assert stats["completed"] == 1
    assert stats["generated_tokens"] == 5
    assert stats["capacity_tokens_per_s"] == FAST.capacity_tokens_per_s()
    assert set(stats["faults"]) == {"fail_429", "fail_503", "timeout", "drop", "garbage"}


async def test_bad_requests_get_400(srv: SimServer, http: aiohttp.ClientSession) -> None:
    cases = [
        (b"not json", "body is not valid JSON"),
        (b'{"messages": []}', "messages must be a non-empty list"),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
            "max_tokens must be an integer >= 1, got 0",
        ),
    ]
    for raw, message in cases:
        async with http.post(srv.url + "/chat/completions", data=raw) as resp:
            assert resp.status == 400
            assert message in (await resp.json())["error"]["message"]


@pytest.mark.parametrize(("fraction", "status"), [(1.0, 429), (0.0, 503)])
async def test_fail_rate_one(http: aiohttp.ClientSession, fraction: float, status: int) -> None:
    server = await start_sim(SimConfig(fail_rate=1.0, fail_429_fraction=fraction))
    try:
        async with http.post(server.url + "/chat/completions", json=_body()) as resp:
            assert resp.status == status
            assert (resp.headers.get("Retry-After") == "1") == (status == 429)
            assert (await resp.json())["error"]["code"] == status
        async with _client(server) as client:
            expected = openai.RateLimitError if status == 429 else openai.InternalServerError
            with pytest.raises(expected):
                await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "x"}]
                )
        assert server.stats()["faults"][f"fail_{status}"] == 2
    finally:
        await server.stop()


async def test_faults_at_run_time(srv: SimServer, http: aiohttp.ClientSession) -> None:
    async with http.post(srv.base_url + "/sim/faults", json={"garbage_rate": 1.0}) as resp:
        assert resp.status == 200
        assert (await resp.json())["garbage_rate"] == 1.0
    async with http.post(srv.url + "/chat/completions", json=_body()) as resp:
        assert resp.status == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(await resp.read())

    srv.set_faults(garbage_rate=0.0, drop_rate=1.0)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.post(srv.url + "/chat/completions", json=_body()) as resp:
            await resp.read()

    srv.set_faults(drop_rate=0.0, timeout_rate=1.0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2), http.post(srv.url + "/chat/completions", json=_body()):
            pass
    srv.set_faults(timeout_rate=0.0, hang_s=0.0)
    async with http.post(srv.url + "/chat/completions", json=_body()) as resp:
        assert resp.status == 200
    assert srv.stats()["faults"] == {
        "fail_429": 0,
        "fail_503": 0,
        "timeout": 1,
        "drop": 1,
        "garbage": 1,
    }

    async with http.post(srv.base_url + "/sim/faults", json={"seed": 1}) as resp:
        assert resp.status == 400
        assert "not a fault field: seed" in (await resp.json())["error"]["message"]


async def test_timeout_fault_ends_after_hang_s(http: aiohttp.ClientSession) -> None:
    server = await start_sim(SimConfig(timeout_rate=1.0, hang_s=0.05))
    try:
        async with http.post(server.url + "/chat/completions", json=_body()) as resp:
            assert resp.status == 504
    finally:
        await server.stop()


async def test_max_waiting_gives_429_and_disconnect_aborts(http: aiohttp.ClientSession) -> None:
    slow = SimConfig(
        max_num_seqs=1,
        max_waiting=1,
        output_tokens="fixed",
        output_tokens_mean=10_000,
        output_tokens_max=10_000,
        tokens_per_step=1,
        step_base_s=0.01,
        step_per_seq_s=0.0,
    )
    server = await start_sim(slow)
    try:

        async def hold() -> None:
            async with http.post(server.url + "/chat/completions", json=_body()) as resp:
                await resp.read()

        holders = [asyncio.create_task(hold()) for _ in range(2)]
        await _eventually(lambda: (server.stats()["running"], server.stats()["waiting"]) == (1, 1))
        async with http.post(server.url + "/chat/completions", json=_body()) as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "1"
        for task in holders:
            task.cancel()
        await asyncio.wait(holders)
        # clients gone: both aborted; the running one leaves at its step end
        await _eventually(lambda: server.stats()["aborted"] == 2 and server.stats()["running"] == 0)
        assert server.stats()["rejected"] == 1
        assert server.stats()["running"] == server.stats()["waiting"] == 0
    finally:
        await server.stop()


async def test_batch_bound_under_load(http: aiohttp.ClientSession) -> None:
    server = await start_sim(
        SimConfig(
            max_num_seqs=4,
            step_base_s=0.001,
            step_per_seq_s=0.0,
            tokens_per_step=8,
            output_tokens_mean=16,
        )
    )
    try:

        async def one(i: int) -> int:
            async with http.post(server.url + "/chat/completions", json=_body(f"q{i}")) as resp:
                return resp.status

        assert set(await asyncio.gather(*(one(i) for i in range(40)))) == {200}
        stats = server.stats()
        assert stats["max_running_seen"] == 4
        assert stats["completed"] == 40
    finally:
        await server.stop()


async def test_stop_leaves_no_tasks_behind(http: aiohttp.ClientSession) -> None:
    before = asyncio.all_tasks()
    server = await start_sim(
        SimConfig(
            output_tokens="fixed",
            output_tokens_mean=10_000,
            output_tokens_max=10_000,
            tokens_per_step=1,
        )
    )
    long_call = asyncio.create_task(http.post(server.url + "/chat/completions", json=_body()))
    await _eventually(lambda: server.stats()["running"] == 1)
    server.set_faults(timeout_rate=1.0)
    hung_call = asyncio.create_task(http.post(server.url + "/chat/completions", json=_body("h")))
    await _eventually(lambda: server.stats()["faults"]["timeout"] == 1)
    async with asyncio.timeout(5):
        await server.stop()
        await server.stop()  # idempotent
    done, _ = await asyncio.wait([long_call, hung_call], timeout=5)
    assert len(done) == 2
    for task in done:  # the long call got a 503, the hung one a dropped connection
        if task.exception() is None:
            task.result().release()
            assert task.result().status == 503
        else:
            assert isinstance(task.exception(), aiohttp.ClientConnectionError)
    leftover = asyncio.all_tasks() - before - {asyncio.current_task()}
    assert leftover == set()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(server.base_url + "/health"):
            pass


async def test_fleet_and_serve_forever(
    http: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = await start_fleet(FAST, replicas=2)
    try:
        assert len({s.port for s in fleet}) == 2
        assert [s.config.seed for s in fleet] == [0, 1]
    finally:
        for server in fleet:
            await server.stop()

    stop = asyncio.Event()
    task = asyncio.create_task(serve_forever(FAST, "127.0.0.1", 0, 2, stop))
    printed: list[str] = []

    def two_lines() -> bool:
        printed.extend(capsys.readouterr().out.splitlines())
        return sum("sim-llm replica" in line for line in printed) == 2

    await _eventually(two_lines)
    lines = [line for line in printed if "sim-llm replica" in line]
    assert all(re.search(r"http://127\.0\.0\.1:\d+/v1 .*capacity=\d+", ln) for ln in lines)
    stop.set()
    async with asyncio.timeout(5):
        await task


async def test_stream_faults(srv: SimServer, http: aiohttp.ClientSession) -> None:
    body = _body(stream=True, max_tokens=40)
    srv.set_faults(garbage_rate=1.0)
    async with http.post(srv.url + "/chat/completions", json=body) as resp:
        events = [e for e in (await resp.read()).decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    with pytest.raises(json.JSONDecodeError):
        json.loads(events[1].removeprefix("data: "))

    srv.set_faults(garbage_rate=0.0, drop_rate=1.0)
    async with http.post(srv.url + "/chat/completions", json=body) as resp:
        assert resp.status == 200  # headers and the first chunks arrive, then the cut
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
