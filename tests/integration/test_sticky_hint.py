"""Stickiness across processes: the envelope's last endpoint steers a fresh client."""

from __future__ import annotations

from matrix_p2p.llm import LLMClient, LLMConfig, LLMResponse
from matrix_p2p.sim.config import SimConfig
from matrix_p2p.sim.server import start_fleet

MSG = [{"role": "user", "content": "hello"}]


async def test_hint_pins_a_new_task_key_to_the_hinted_replica() -> None:
    servers = await start_fleet(SimConfig(output_tokens="fixed", output_tokens_mean=4), replicas=3)
    try:
        urls = [s.url for s in servers]
        hinted = servers[2].base_url
        # a fresh client, as in another worker process that never saw the task
        async with LLMClient(LLMConfig(endpoints=urls)) as client:
            for i in range(6):
                r = await client.chat(MSG, sticky_key="task-7", sticky_hint=hinted + "/v1")
                assert isinstance(r, LLMResponse), r
                assert r.endpoint == hinted, (i, r.endpoint)
    finally:
        for s in servers:
            await s.stop()


async def test_unknown_hint_falls_back_to_the_pool() -> None:
    servers = await start_fleet(SimConfig(output_tokens="fixed", output_tokens_mean=4), replicas=1)
    try:
        async with LLMClient(LLMConfig(endpoints=[servers[0].url])) as client:
            r = await client.chat(MSG, sticky_key="t", sticky_hint="http://127.0.0.1:9/v1")
            assert isinstance(r, LLMResponse)
            assert r.endpoint == servers[0].base_url
    finally:
        await servers[0].stop()
