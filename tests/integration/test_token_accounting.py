"""Every token is counted in exactly one row: for each bundled workflow, a small run on the
simulator (no faults) whose rows' ``usage`` sums to what the server itself says it
processed (vLLM's ``/metrics`` counters). A row that copies another's usage (a fan-out
child counting its parent's turns) makes the sum too big; an LLM call whose usage no
turn records (a filter, a user simulator, a call after the last ``say``) makes it too small.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from pathlib import Path

import aiohttp
import msgspec
import pytest

from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.bus import ConnectOptions
from matrix_p2p.runtime.local_run import RunOptions, run_workflow
from matrix_p2p.sim.config import SimConfig
from matrix_p2p.sim.server import start_fleet
from tests.integration.helpers import read_rows

_n = itertools.count()
FAST = SimConfig(step_base_s=0.001, step_per_seq_s=0.0, tokens_per_step=16)
SAMPLE = re.compile(r"^(vllm:(?:prompt|generation)_tokens_total)\{[^}]*\} (\S+)$", re.M)
# tasks per workflow: enough that natural_reasoning keeps a few documents and fans out
LIMITS = {"dummy": 4, "coral": 4, "code_verify": 3, "tau": 2, "natural_reasoning": 40}


async def server_tokens(base_url: str) -> tuple[int, int]:
    """``vllm:prompt_tokens_total`` and ``vllm:generation_tokens_total`` from ``/metrics``."""
    async with aiohttp.ClientSession() as http, http.get(base_url + "/metrics") as resp:
        text = await resp.text()
    found = {name: int(float(value)) for name, value in SAMPLE.findall(text)}
    return found["vllm:prompt_tokens_total"], found["vllm:generation_tokens_total"]


@pytest.mark.parametrize("name", list(LIMITS))
async def test_the_rows_usage_sums_to_the_servers_token_counters(
        name: str, nats_server: EmbeddedNats, tmp_path: Path) -> None:
    from matrix_p2p.workflow import loader

    # under a fresh name: its own streams on the shared test broker
    spec = msgspec.structs.replace(loader.load(name), name=f"{name}{next(_n)}x{os.getpid()}")
    [sim] = await start_fleet(msgspec.structs.replace(FAST, seed=spec.seed), 1)
    try:
        opts = RunOptions(limit=LIMITS[name], out=str(tmp_path / "out.jsonl"),
                          nats=ConnectOptions(url=nats_server.url, name="test"),
                          llm_urls=[sim.url], progress=False, drain_timeout_s=10)
        async with asyncio.timeout(120):
            result = await run_workflow(spec, opts, asyncio.Event())
        served = await server_tokens(sim.base_url)
    finally:
        await sim.stop()
    rows = read_rows(Path(result.out))
    assert len({r["id"] for r in rows}) == len(rows) == result.rows
    assert len([r for r in rows if "parent" not in r]) == LIMITS[name]
    counted = (sum(r["usage"]["total"].get("prompt_tokens", 0) for r in rows),
               sum(r["usage"]["total"].get("completion_tokens", 0) for r in rows))
    assert counted == served, f"{name}: rows count {counted}, the server processed {served}"
    if name != "dummy":
        assert served[1] > 0, f"{name} made no LLM call"
    if name == "natural_reasoning":  # the fan-out is part of what is checked
        children = [r for r in rows if "parent" in r]
        assert children and all(r["usage"]["total"] for r in children)
