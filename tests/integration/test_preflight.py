"""Preflight: ``run``, ``worker`` and the API check their LLM endpoints and sandbox servers at
start. A closed port or a model nobody serves is one line and exit status 2 within seconds,
before anything is submitted (on main it burned every task to ``failed`` after a minute)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from matrix_p2p.api import run_async, serve
from matrix_p2p.broker import EmbeddedNats, free_port
from matrix_p2p.errors import ConfigError
from matrix_p2p.llm.probe import probe_endpoints
from matrix_p2p.sandbox import SandboxConfig, SandboxServer
from matrix_p2p.sandbox.client import probe_health
from matrix_p2p.sim.config import SimConfig
from matrix_p2p.sim.server import SimServer, start_fleet
from tests.conftest import make_spec
from tests.procs import mx

# a role that uses the LLM resource `default` (given by --llm-url), with an agent that
# never calls it: without the check, a run against a dead endpoint would just finish
TALKER = """
source: {path: rows.jsonl}
roles:
  a: {agent: "matrix_p2p_agents.dummy:Talker"}
routing: {type: cycle, roles: [a], max_turns: 1}
"""
ROWS = [{"q": i} for i in range(5)]
PREFIX = "matrix_p2p: error: "


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    (server,) = await start_fleet(SimConfig(seed=0), replicas=1)
    yield server
    await server.stop()


async def test_probe_says_which_models_an_endpoint_serves_and_why_another_is_down(
        sim: SimServer) -> None:
    closed = closed_url()
    got = await probe_endpoints([closed, sim.url, sim.url + "/"], timeout_s=5.0)
    assert [(p.url, p.models) for p in got] == [
        (closed.removesuffix("/v1"), ()), (sim.url.removesuffix("/v1"), ("sim-model",))]
    assert got[0].error is not None
    assert got[0].error.startswith(f"{closed.removesuffix('/v1')}: cannot connect (")
    assert got[1].ok


async def test_sandbox_health_probe() -> None:
    closed = closed_url().removesuffix("/v1")
    async with SandboxServer(SandboxConfig(pool_size=1)) as srv:
        up, down = await probe_health([srv.url, closed], timeout_s=5.0)
    assert (up.url, up.error, up.braked) == (srv.url, None, False)
    assert up.free is not None
    assert down.error is not None and down.error.startswith(f"sandbox server {closed} unreachable")


def test_run_with_a_closed_llm_url_exits_2_at_once_with_one_line(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, TALKER, ROWS)
    url = closed_url()
    t0 = time.monotonic()
    r = mx("run", spec.path, "--llm-url", url, "--no-progress", "--store", str(tmp_path / "st"),
           "--out", str(tmp_path / "out.jsonl"), timeout=60)
    assert time.monotonic() - t0 < 30
    base = url.removesuffix("/v1")
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip()
    assert "\n" not in line, r.stderr
    assert line.startswith(f"{PREFIX}--llm-url: no LLM endpoint answers (roles a): "
                           f"{base}: cannot connect ("), line
    assert line.endswith("is the server up? (--no-preflight skips this check)")
    assert not (tmp_path / "st").exists()  # nothing was started: no broker, no store
    assert not (tmp_path / "out.jsonl").exists()


def test_no_preflight_skips_the_check(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    spec = make_spec(tmp_path, TALKER, ROWS)
    out = tmp_path / "out.jsonl"
    r = mx("run", spec.path, "--llm-url", closed_url(), "--no-preflight", "--no-progress",
           "--nats", nats_server.url, "--out", str(out), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(out.read_text().splitlines()) == len(ROWS)


def test_worker_with_a_closed_llm_url_exits_2(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    spec = make_spec(tmp_path, TALKER, ROWS)
    r = mx("worker", spec.path, "--role", "all", "--nats", nats_server.url,
           "--llm-url", closed_url(), timeout=30)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{PREFIX}--llm-url: no LLM endpoint answers (roles a): "), last


SANDBOXED = """
source: {path: rows.jsonl}
resources:
  sandbox:
    box: {pool: 1}
roles:
  a: {agent: "matrix_p2p_agents.dummy:Talker", llm: null, resources: [box]}
routing: {type: cycle, roles: [a], max_turns: 1}
"""


def test_run_with_no_sandbox_server_answering_exits_2(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, SANDBOXED, ROWS)
    url = closed_url().removesuffix("/v1")
    r = mx("run", spec.path, "--sandbox-url", url, "--no-progress",
           "--store", str(tmp_path / "st"), "--out", str(tmp_path / "out.jsonl"), timeout=60)
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip()
    assert line.startswith(f"{PREFIX}--sandbox-url: no sandbox server answers "
                           f"(resources.sandbox.box): sandbox server {url} unreachable"), line
    assert "\n" not in line


async def test_a_model_no_endpoint_serves_is_a_config_error(
        tmp_path: Path, sim: SimServer, nats_server: EmbeddedNats) -> None:
    spec = make_spec(tmp_path, TALKER + "resources:\n  llm:\n    default: {model: llama-70b}\n",
                     ROWS)
    with pytest.raises(ConfigError) as exc:
        await run_async(spec, llm_urls=[sim.url], nats=nats_server.url,
                        out=tmp_path / "out.jsonl")
    base = sim.url.removesuffix("/v1")
    assert str(exc.value) == (
        f"--llm-url: model 'llama-70b' (resources.llm.default.model) is not served by any "
        f"endpoint that answers: {base} serves sim-model (--no-preflight skips this check)")
    assert not (tmp_path / "out.jsonl").exists()


async def test_some_endpoints_down_is_a_warning_and_the_run_goes_on(
        tmp_path: Path, sim: SimServer, nats_server: EmbeddedNats) -> None:
    spec = make_spec(tmp_path, TALKER + "resources:\n  llm:\n    default: {model: sim-model}\n",
                     ROWS)
    closed = closed_url()
    # an in-process CLI test before this one may have left a warning-level filter in place
    structlog.reset_defaults()
    with capture_logs() as logs:
        result = await run_async(spec, llm_urls=[closed, sim.url], nats=nats_server.url,
                                 out=tmp_path / "out.jsonl")
    assert result.dataset_done == len(ROWS)
    seen = [(e["event"], e.get("url"), e.get("models"), e.get("detail")) for e in logs
            if e["event"].startswith("preflight.")]
    assert ("preflight.llm", sim.url.removesuffix("/v1"), ["sim-model"], None) in seen
    warnings = [d for ev, _, _, d in seen if ev == "preflight.warning"]
    assert len(warnings) == 1
    assert warnings[0].startswith("LLM endpoint(s) not answering, going on with the others: "
                                  f"{closed.removesuffix('/v1')}: cannot connect (")


async def test_serve_checks_first(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, TALKER, ROWS)
    with pytest.raises(ConfigError, match="no LLM endpoint answers"):
        # the broker's URL is dead too: the check comes before connecting
        async with serve(spec, nats="nats://127.0.0.1:1", llm_urls=[closed_url()]):
            pass

