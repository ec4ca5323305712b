"""Fleet-wide LLM endpoint state through a real nats-server's key-value store."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.bus import Bus, ConnectOptions, connect
from matrix_p2p.bus.fleet_kv import KVFleetState, endpoint_key, key_endpoint
from matrix_p2p.errors import BusError
from matrix_p2p.llm import EndpointState, FleetState, LLMClient, LLMConfig, LLMError, LLMResponse
from matrix_p2p.resources.llm import open_fleet_state
from matrix_p2p.sim.config import SimConfig
from matrix_p2p.sim.server import SimServer, start_sim

MSGS = [{"role": "user", "content": "hi"}]
FAST = SimConfig(step_base_s=0.002, output_tokens="fixed", output_tokens_mean=8)


def bucket() -> str:
    return f"MX_LLM_FLEET_T{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def other_bus(nats_server: EmbeddedNats) -> AsyncIterator[Bus]:
    """A second connection: another worker process, as far as the broker can tell."""
    b = await connect(ConnectOptions(url=nats_server.url, name="tests-other"))
    yield b
    await b.close()


@pytest.fixture
async def sims() -> AsyncIterator[list[SimServer]]:
    servers = [await start_sim(FAST), await start_sim(FAST)]
    yield servers
    for s in servers:
        await s.stop()


def test_endpoint_keys_are_kv_safe_and_reversible() -> None:
    for url in ("http://127.0.0.1:8000", "https://gpu-7.example.com:8443/base", "http://[::1]:1"):
        key = endpoint_key(url)
        assert re.fullmatch(r"[-_A-Za-z0-9]+", key)
        assert key_endpoint(key) == url
    with pytest.raises(ValueError, match="not an endpoint key: 'a'"):
        key_endpoint("a")


async def test_state_round_trips_between_connections(bus: Bus, other_bus: Bus) -> None:
    name = bucket()
    async with bus.fleet_state(bucket=name) as one, other_bus.fleet_state(bucket=name) as two:
        assert isinstance(one, FleetState)
        heard = asyncio.Event()
        seen: list[tuple[str, EndpointState]] = []

        def on_state(url: str, st: EndpointState) -> None:
            seen.append((url, st))
            heard.set()

        two.subscribe(on_state)
        state = EndpointState(limit=7, worker="w1", updated_at=1e12)
        await one.publish("http://h:8000", state)
        async with asyncio.timeout(5):
            await heard.wait()
        assert seen == [("http://h:8000", state)]
        assert two.latest() == {"http://h:8000": state}
    # a process that starts later finds it before start() returns
    async with other_bus.fleet_state(bucket=name) as late:
        assert late.latest()["http://h:8000"].limit == 7


async def test_429_on_one_client_backs_off_another_and_a_new_one_starts_learned(
    bus: Bus, other_bus: Bus, sims: list[SimServer]
) -> None:
    x, y = sims
    x.set_faults(fail_rate=1.0, fail_429_fraction=1.0)  # every answer: 429, Retry-After: 1
    x_url = x.base_url
    name = bucket()
    cfg_a = LLMConfig(endpoints=[x.url], initial_limit=20, max_retries=0,
                      fleet_publish_interval_s=0.0)
    cfg_b = LLMConfig(endpoints=[x.url, y.url], max_retries=0)
    with capture_logs() as logs:
        async with (
            open_fleet_state(bus, bucket=name) as fleet_a,
            open_fleet_state(other_bus, bucket=name) as fleet_b,
            LLMClient(cfg_a, fleet=fleet_a, worker_id="A") as a,
            LLMClient(cfg_b, fleet=fleet_b, worker_id="B") as b,
        ):
            assert fleet_b is not None
            heard = asyncio.Event()
            fleet_b.subscribe(lambda url, st: heard.set()
                              if url == x_url and st.worker == "A" and st.retry_after_until
                              else None)
            r = await a.chat(MSGS)
            assert isinstance(r, LLMError)
            assert (r.kind, r.status, r.retry_after_s) == ("rate_limited", 429, 1.0)
            async with asyncio.timeout(5):
                await heard.wait()
            # B never saw a 429 itself, yet keeps off x for the rest of the Retry-After
            rs = await asyncio.gather(*(b.chat(MSGS) for _ in range(8)))
            assert all(isinstance(rb, LLMResponse) and rb.endpoint == y.base_url for rb in rs)
            b_x = next(e for e in b.snapshot() if e.url == x_url)
            assert b_x.rejected_429 == 0
            assert b_x.limit < 32  # the fleet's 429 counted as congestion here too
        # a worker that joins later starts from the fleet's learned limit, not from scratch
        async with (
            open_fleet_state(bus, bucket=name) as fleet_c,
            LLMClient(LLMConfig(endpoints=[x.url]), fleet=fleet_c, worker_id="C") as c,
        ):
            assert fleet_c is not None
            assert fleet_c.latest()[x_url].worker == "A"
            assert next(e for e in c.snapshot() if e.url == x_url).limit == 14
    assert x.stats()["faults"]["fail_429"] == 1  # only A's one request reached x
    assert any(e["event"] == "llm.endpoint_backoff" and e.get("reason") == "fleet"
               and e.get("worker") == "A" for e in logs)


async def test_watcher_recovers_after_the_bucket_disappears(bus: Bus, other_bus: Bus) -> None:
    name = bucket()
    fleet = KVFleetState(bus.js, bucket=name, resync_s=0.3, backoff_cap_s=0.2)
    writer = KVFleetState(other_bus.js, bucket=name)
    heard = asyncio.Event()
    fleet.subscribe(lambda url, st: heard.set() if st.limit == 9 else None)
    async with fleet, writer:
        await bus.js.delete_key_value(name)
        # the writer's first put fails (the bucket is gone); the next one recreates it
        with pytest.raises(BusError, match=f"fleet state put to {name} failed"):
            await writer.publish("http://h:1", EndpointState(limit=8, updated_at=1e12))
        await writer.publish("http://h:1", EndpointState(limit=9, updated_at=1e12))
        # the reader's watch of the deleted bucket goes quiet; it watches afresh
        async with asyncio.timeout(10):
            await heard.wait()
    assert fleet.latest()["http://h:1"].limit == 9
