"""The sandbox service's API and leases: a real server on a free 127.0.0.1 port, real bwrap."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from matrix_p2p.backoff import Backoff
from matrix_p2p.errors import ConfigError
from matrix_p2p.sandbox import (
    LeaseGone,
    SandboxClient,
    SandboxConfig,
    SandboxError,
    SandboxServer,
    SandboxService,
    SandboxUnavailable,
)


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def server() -> AsyncIterator[SandboxServer]:
    async with SandboxServer(SandboxConfig(pool_size=1)) as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def _eventually(pred: object, timeout_s: float = 10.0) -> None:
    """Poll service state under a deadline: a slot's cleaning has no public event."""
    assert callable(pred)
    async with asyncio.timeout(timeout_s):
        while not pred():  # noqa: ASYNC110 - polling state that has no event
            await asyncio.sleep(0.01)


async def test_503_with_retry_after_then_a_waiting_client_proceeds(
    server: SandboxServer, http: aiohttp.ClientSession
) -> None:
    async with SandboxClient(server.url, acquire_timeout_s=30, long_poll_s=20) as client:
        held = await client.acquire("first")
        async with http.post(server.url + "/acquire", json={"task_id": "second"}) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "1"
            body = await resp.read()
            assert b"\n" not in body and b"sandbox pool exhausted" in body
        waiting = asyncio.create_task(client.acquire("second"))
        await _eventually(lambda: server.service.pool.counters.refused >= 2)
        assert not waiting.done()
        await client.release(held)
        async with asyncio.timeout(10):  # the long poll wakes when the slot is clean
            got = await waiting
        assert got.id != held.id
        assert (await client.status())["leased"] == 1


async def test_acquire_gives_up_at_its_deadline(server: SandboxServer) -> None:
    async with SandboxClient(server.url, long_poll_s=0.2) as client:
        await client.acquire("holder")
        with pytest.raises(SandboxUnavailable,
                           match="no sandbox before the deadline: sandbox pool exhausted"):
            await client.acquire("late", timeout_s=1.0)


async def test_expired_lease_is_reclaimed_and_its_dir_wiped() -> None:
    clock = Clock()
    svc = SandboxService(SandboxConfig(pool_size=1, ttl_s=30), clock=clock)
    async with SandboxServer(svc.config, service=svc) as srv, SandboxClient(srv.url) as client:
        lease = await client.acquire("doomed")
        await client.execute(lease, cmd="echo x > state")
        slot_dir = Path(svc.work_dir(svc.pool.get(lease.id).slot))
        assert (slot_dir / "state").exists()
        clock.now += 29
        renewed = await client.renew(lease)
        assert renewed.expires_at > lease.expires_at
        clock.now += 29
        assert svc.reap() == 0  # renewed: 1 s left
        clock.now += 2  # the task's worker died: nobody renews
        assert svc.reap() == 1
        with pytest.raises(LeaseGone, match="unknown lease"):
            await client.execute(lease, cmd="true")
        with pytest.raises(LeaseGone):
            await client.renew(lease)
        await _eventually(lambda: svc.pool.counts()["free"] == 1)
        assert not (slot_dir / "state").exists()
        status = await client.status()
        assert status["leased"] == 0 and status["reclaimed"] == 1


async def test_matrix_container_api_shapes(server: SandboxServer, http: aiohttp.ClientSession) -> None:
    url = server.url
    acq = {"image": "docker://ubuntu:22.04", "executable": "apptainer", "run_args": [], "timeout": 5}
    async with http.post(url + "/acquire", json=acq) as resp:
        assert resp.status == 200
        got = await resp.json()
    cid = got["container_id"]
    assert got["lease"] == cid and got["expires_at"] > 0
    body = {"container_id": cid, "cmd": "echo out; echo err >&2; echo $X; pwd", "cwd": "/work",
            "env": {"X": "ex"}, "timeout": 10}
    async with http.post(url + "/execute", json=body) as resp:
        assert resp.status == 200
        res = await resp.json()
    assert res["returncode"] == 0 and res["stdout"] == "out\nex\n/work\n" and res["stderr"] == "err\n"
    assert res["output"] == "out\nex\n/work\nerr\n"
    assert set(res) >= {"returncode", "stdout", "stderr", "timed_out", "elapsed_s", "output"}
    async with http.post(url + "/execute", json={"container_id": cid, "cmd": ["echo", "a b"]}) as resp:
        assert (await resp.json())["stdout"] == "a b\n"
    async with http.post(url + "/execute", json={"lease": cid, "argv": ["cat"], "stdin": "piped",
                                                 "timeout_s": 5, "files": {"sub/f.txt": "F"}}) as resp:
        assert (await resp.json())["stdout"] == "piped"
    async with http.post(url + "/execute", json={"lease": cid, "cmd": "cat f.txt", "cwd": "sub"}) as resp:
        assert (await resp.json())["stdout"] == "F"
    async with http.post(url + "/release", json={"container_id": cid}) as resp:
        assert (await resp.json())["status"] == "released"
    async with http.post(url + "/acquire", json={"timeout": 10}) as resp:
        cid2 = (await resp.json())["container_id"]
    async with http.post(url + "/release_all", json={}) as resp:
        assert (await resp.json())["container_ids"] == [cid2]
    async with http.get(url + "/status") as resp:
        status = await resp.json()
    assert {"pool_size", "leased", "free", "unhealthy", "executions", "timeouts"} <= set(status)
    assert status["leased"] == 0 and status["executions"] == 4


@pytest.mark.parametrize(
    ("path", "body", "field", "message"),
    [
        ("/execute", b'{"lease": "x", "timeout_s": "soon", "cmd": "true"}', "timeout_s",
         "timeout_s: Expected `float | null`, got `str`"),
        ("/execute", b'{"lease": "x"}', "argv", "argv: required (or `cmd`)"),
        ("/execute", b'{"cmd": "true"}', "lease", "lease: required (or `container_id`)"),
        ("/execute", b'{"lease": "x", "cmd": "true", "timeout_s": -1}', "timeout_s",
         "timeout_s: must be > 0, got -1.0"),
        ("/execute", b'{"lease": "x", "cmd": "true", "files": {"../up": "x"}}', "files",
         "files: '../up' must be a relative path inside the work dir"),
        ("/acquire", b'{"ttl_s": [1]}', "ttl_s", "ttl_s: Expected `float | null`, got `array`"),
        ("/renew", b"not json", "body", "body: not valid JSON"),
    ],
)
async def test_bad_requests_are_400_with_one_line_naming_the_field(
    server: SandboxServer, http: aiohttp.ClientSession, path: str, body: bytes, field: str, message: str
) -> None:
    async with http.post(server.url + path, data=body) as resp:
        assert resp.status == 400
        raw = await resp.read()
    assert b"\n" not in raw
    doc = await resp.json()
    assert doc["field"] == field and doc["error"].startswith(message) and doc["detail"] == doc["error"]


async def test_unknown_lease_is_404_and_lease_gone_for_the_client(
    server: SandboxServer, http: aiohttp.ClientSession
) -> None:
    async with http.post(server.url + "/execute", json={"lease": "nope", "cmd": "true"}) as resp:
        assert resp.status == 404
        assert (await resp.json())["field"] == "lease"
    async with SandboxClient(server.url) as client:
        with pytest.raises(LeaseGone, match="unknown lease 'nope'"):
            await client.execute("nope", cmd="true")
        assert await client.release("nope") is False
        lease = await client.acquire("t")
        with pytest.raises(SandboxError, match="files: '/etc/passwd' must be a relative path") as info:
            await client.execute(lease, cmd="true", files={"/etc/passwd": "x"})
        assert info.value.status == 400


async def test_metrics_and_healthz(server: SandboxServer, http: aiohttp.ClientSession) -> None:
    async with SandboxClient(server.url) as client:
        lease = await client.acquire("m")
        await client.execute(lease, cmd="exit 3")
    async with http.get(server.url + "/metrics") as resp:
        text = await resp.text()
    assert 'matrix_p2p_sandbox_slots{state="leased"} 1.0' in text
    assert "matrix_p2p_sandbox_executions_total 1.0" in text
    assert "matrix_p2p_sandbox_execution_nonzero_total 1.0" in text
    assert "matrix_p2p_sandbox_pool_size 1.0" in text
    async with http.get(server.url + "/healthz") as resp:
        assert resp.status == 200 and (await resp.json())["ok"] is True


async def test_unhealthy_slot_brakes_the_pool_then_recovers(http: aiohttp.ClientSession) -> None:
    cfg = SandboxConfig(pool_size=1, brake_after=1, brake_s=60)
    async with SandboxServer(cfg) as srv, SandboxClient(srv.url, long_poll_s=0) as client:
        svc = srv.service
        svc.pool.recheck = Backoff(0.5, 0.5, rng=lambda: 1.0)  # recheck soon
        os.chmod(svc.work_dir(0), 0o500)  # the health check (`test -w .`) now fails
        with capture_logs() as logs:
            async with http.post(srv.url + "/acquire", json={}) as resp:
                assert resp.status == 503
                assert "sandbox pool braked" in (await resp.json())["error"]
                assert resp.headers["Retry-After"] == "1"  # the recheck is due before the brake ends
        assert any(e["event"] == "sandbox.health_check_failed" for e in logs)
        # The recheck rebuilds the slot's directory; one success releases the brake.
        async with asyncio.timeout(10):
            lease = await client.acquire("t2", timeout_s=10)
        assert (await client.execute(lease, cmd="touch ok")).returncode == 0
        assert (await client.status())["health_failed"] >= 1


async def test_client_breaker_opens_on_a_dead_server() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    client = SandboxClient(f"http://127.0.0.1:{port}", backoff=Backoff(0.01, 0.02),
                           breaker_failures=2, breaker_cooldown_s=30)
    async with client:
        with pytest.raises(SandboxUnavailable, match="no sandbox before the deadline"):
            await client.acquire("t", timeout_s=0.5)
        assert client.breaker.state == "open"
        with pytest.raises(SandboxUnavailable, match="circuit open"):
            await client.execute("any", cmd="true")


def fake_bwrap() -> Path:
    """A bwrap that fails like one on a host without user namespaces, somewhere
    the sandbox uids can reach (pytest's tmp_path is 0700)."""
    where = Path(tempfile.mkdtemp(prefix="mx-fake-bwrap-"))
    where.chmod(0o755)
    fake = where / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create a new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    return fake


async def test_refuses_to_start_when_bwrap_cannot_sandbox() -> None:
    fake = fake_bwrap()
    where = fake.parent
    svc = SandboxService(SandboxConfig(pool_size=1, bwrap=str(fake)))
    try:
        with pytest.raises(ConfigError) as info:
            await svc.start()
    finally:
        shutil.rmtree(where)
    msg = str(info.value)
    assert "\n" not in msg and "No permissions to create a new namespace" in msg
    assert "--isolation none" in msg


async def test_isolation_none_is_loud_and_still_runs_in_the_work_dir() -> None:
    with capture_logs() as logs:
        async with SandboxServer(SandboxConfig(pool_size=1, isolation="none")) as srv, \
                SandboxClient(srv.url) as client:
            lease = await client.acquire("t")
            res = await client.execute(lease, cmd="echo hi > f; cat f; sleep 30", timeout_s=1)
            assert res.stdout == "hi\n" and res.timed_out
    assert any(e["event"] == "sandbox.isolation_disabled" and e["log_level"] == "warning" for e in logs)


def test_cli_serves_until_sigterm() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "matrix_p2p.sandbox", "--port", "0", "--pool", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # blocks until the server prints its URL (or exits)
            assert line.startswith("sandbox-server http://127.0.0.1:"), line
            assert "pool=1 isolation=bwrap" in line
            proc.terminate()
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
