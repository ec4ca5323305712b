"""`run` starts the simulator only for roles whose LLM resource names no endpoints."""

from __future__ import annotations

from matrix_p2p.runtime.local_run import RunOptions, _llm_urls
from matrix_p2p.workflow import loader


async def test_no_simulator_for_roles_without_an_llm() -> None:
    async with _llm_urls(RunOptions(), loader.load("dummy")) as urls:
        assert urls == []


async def test_simulator_for_a_resource_without_endpoints() -> None:
    async with _llm_urls(RunOptions(), loader.load("coral")) as urls:
        assert len(urls) == 1
        assert urls[0].startswith("http://127.0.0.1:")


async def test_given_urls_replace_the_simulator() -> None:
    opts = RunOptions(llm_urls=["http://127.0.0.1:9/v1"])
    async with _llm_urls(opts, loader.load("coral")) as urls:
        assert urls == ["http://127.0.0.1:9/v1"]
