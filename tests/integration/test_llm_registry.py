"""Replicas that announce themselves: registrars and clients through a real nats-server's
key-value store, against simulator replicas."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.bus import Bus
from matrix_p2p.bus.registry_kv import ReplicaRegistry
from matrix_p2p.llm import LLMClient, LLMConfig, LLMResponse
from matrix_p2p.llm.registrar import Registrar
from matrix_p2p.llm.registry import Registration, serving
from matrix_p2p.llm.scoring import ReplicaLoad
from matrix_p2p.sim.config import SimConfig
from matrix_p2p.sim.server import SimServer, start_sim
from tests.conftest import make_spec
from tests.procs import env, mx

MSGS = [{"role": "user", "content": "hi"}]
FAST = SimConfig(step_base_s=0.002, output_tokens="fixed", output_tokens_mean=8)
MODEL = FAST.model
ROOT = Path(__file__).resolve().parents[2]


def bucket() -> str:
    return f"MX_LLM_REPLICAS_T{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def sims() -> AsyncIterator[list[SimServer]]:
    servers = [await start_sim(FAST), await start_sim(FAST)]
    yield servers
    for s in servers:
        await s.stop()


async def until(reg: ReplicaRegistry, pred: Callable[[], bool], within: float = 10.0) -> None:
    """Wait for ``pred()`` on the registry's change events (bounded)."""
    changed = asyncio.Event()
    unsubscribe = reg.subscribe(changed.set)
    try:
        async with asyncio.timeout(within):
            while not pred():
                await changed.wait()
                changed.clear()
    finally:
        unsubscribe()


async def until_endpoints(client: LLMClient, pred: Callable[[list[str]], bool],
                          within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not pred(client.endpoints()):
            await client.wait_endpoints_changed()


def entry(url: str, *, ttl: float = 60.0, waiting: int = 0) -> Registration:
    return Registration(url=url, models=[MODEL], updated_at=time.time(), ttl_s=ttl,
                        max_num_seqs=8, load=ReplicaLoad(waiting=waiting, running=0))


async def test_registrar_announces_the_server_with_its_load_and_withdraws_on_stop(
        bus: Bus, sims: list[SimServer]) -> None:
    name = bucket()
    async with bus.replica_registry(bucket=name) as reader:  # type: ignore[attr-defined]
        stop, ready = asyncio.Event(), asyncio.Event()
        registrar = Registrar(sims[0].url, bus.replica_registry(bucket=name),  # type: ignore[attr-defined]
                              interval_s=0.1, ttl_s=5.0, max_num_seqs=4)
        task = asyncio.create_task(registrar.run(stop, ready))
        async with asyncio.timeout(10):
            await ready.wait()
        await until(reader, lambda: bool(reader.entries()))
        [got] = reader.entries()
        assert (got.url, got.models, got.max_num_seqs, got.ttl_s) == (
            sims[0].base_url, [MODEL], 4, 5.0)
        assert got.load.running == 0 and got.load.waiting == 0  # scraped from the sim's /metrics
        await until(reader, lambda: registrar.renewals >= 3)  # renewed, not written once
        stop.set()
        await task
        await until(reader, lambda: not reader.entries(), within=5)  # removed when stopped


async def test_registrar_refuses_a_model_the_server_does_not_serve(
        bus: Bus, sims: list[SimServer]) -> None:
    from matrix_p2p.errors import ConfigError

    registrar = Registrar(sims[0].url, bus.replica_registry(bucket=bucket()),  # type: ignore[attr-defined]
                          model="llama-70b", startup_timeout_s=0)
    with pytest.raises(ConfigError, match=r"serves sim-model, not --model llama-70b"):
        await registrar.run(asyncio.Event())


async def test_a_client_follows_the_registry_new_replicas_get_traffic_lapsed_ones_none(
        bus: Bus, sims: list[SimServer]) -> None:
    name = bucket()
    writer: ReplicaRegistry = bus.replica_registry(bucket=name)  # type: ignore[attr-defined]
    a, b = sims[0].base_url, sims[1].base_url
    await writer.put(entry(a, waiting=50))  # a long published queue: b wins once it is there
    async with bus.replica_registry(bucket=name) as reader:  # type: ignore[attr-defined]
        await until(reader, lambda: bool(serving(reader.entries(), MODEL, time.time())))
        cfg = LLMConfig(model=MODEL, metrics_poll_s=None, sticky=False)
        async with LLMClient(cfg, registry=reader) as client:
            assert client.endpoints() == [a]
            r = await client.chat(MSGS)
            assert isinstance(r, LLMResponse) and r.endpoint == a
            # b registers mid-run, then its registrar dies (no renewal, no delete)
            await writer.put(entry(b, ttl=1.5))
            await until_endpoints(client, lambda urls: b in urls, within=5)
            r = await client.chat(MSGS)
            assert isinstance(r, LLMResponse) and r.endpoint == b
            await until_endpoints(client, lambda urls: urls == [a], within=10)
            for _ in range(5):
                r = await client.chat(MSGS)
                assert isinstance(r, LLMResponse) and r.endpoint == a
            await writer.delete(a)  # withdrawn: removed at once
            await until_endpoints(client, lambda urls: urls == [], within=5)


async def test_llm_register_cli_withdraws_on_sigterm(
        bus: Bus, nats_server: EmbeddedNats, sims: list[SimServer]) -> None:
    name = bucket()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "matrix_p2p", "llm-register", sims[0].url, "--nats",
        nats_server.url, "--model", MODEL, "--interval", "0.2", "--bucket", name,
        env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        async with bus.replica_registry(bucket=name) as reader:  # type: ignore[attr-defined]
            await until(reader, lambda: bool(reader.entries()), within=30)
            assert [e.url for e in reader.entries()] == [sims[0].base_url]
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                _, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            await until(reader, lambda: not reader.entries(), within=5)
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()


def test_worker_with_no_endpoints_and_no_registered_replica_exits_2_saying_what_to_do(
        nats_server: EmbeddedNats, tmp_path: object) -> None:
    r = mx("worker", "coral", "--role", "all", "--nats", nats_server.url,
           "--registry-wait", "0.5", timeout=60)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("matrix_p2p: error: "), last
    assert "no replica serving" in last and "llm-register" in last and "--llm-url" in last, last


async def test_run_on_a_fleet_broker_uses_the_registered_replicas(
        bus: Bus, nats_server: EmbeddedNats, sims: list[SimServer], tmp_path: Path) -> None:
    """``run --nats`` with no endpoints: the registered replica serves every call, not a
    simulator of its own."""
    name = bucket()
    coral = (ROOT / "workflows" / "coral.yaml").read_text(encoding="utf-8")
    coral = coral.replace("name: coral\n", "").replace(
        "data/coral_questions.jsonl", str(ROOT / "workflows" / "data" / "coral_questions.jsonl"))
    spec = make_spec(tmp_path, coral)
    writer: ReplicaRegistry = bus.replica_registry(bucket=name)  # type: ignore[attr-defined]
    await writer.put(entry(sims[0].base_url))
    out = tmp_path / "out.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "matrix_p2p", "run", spec.path, "--limit", "3", "--no-progress",
        "--nats", nats_server.url, "--out", str(out),
        env={**env(), "MX_LLM_REGISTRY_BUCKET": name}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        async with asyncio.timeout(120):
            _, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "llm.registry_used" in err.decode()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(r["status"] == "done" for r in rows)
    assert sims[0].stats()["completed"] >= 3 and sims[1].stats()["completed"] == 0
