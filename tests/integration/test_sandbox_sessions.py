"""Sandbox sessions' lifecycle against real bubblewrap: a real server on a free 127.0.0.1 port.

A session's processes are found by a unique marker on their command lines and
by the wrapper's pid; "gone" is checked after the session pipe's ``closed``
event (the process exited and every holder of its pipes is gone), never after
a sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from matrix_p2p.sandbox import (
    LeaseGone,
    NoSession,
    SandboxClient,
    SandboxConfig,
    SandboxServer,
    SandboxService,
    SessionDied,
    SessionTimeout,
)
from matrix_p2p.sandbox.runner import LongLived
from tests.integration import session_prog
from tests.integration.test_sandbox_isolation import processes

LIVE_S = 10.0  # bound on waiting for a process to go (a kill takes milliseconds)


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def server() -> AsyncIterator[SandboxServer]:
    async with SandboxServer(SandboxConfig(pool_size=2)) as srv:
        yield srv


@pytest.fixture
async def client(server: SandboxServer) -> AsyncIterator[SandboxClient]:
    async with SandboxClient(server.url, acquire_timeout_s=10) as c:
        yield c


def pipe_of(srv: SandboxServer, lease_id: str) -> LongLived:
    return srv.service.sessions.pipes[lease_id]


async def assert_gone(pipe: LongLived, mark: str) -> None:
    """The session's process exited, its pipes closed, and nothing with its marker is left."""
    async with asyncio.timeout(LIVE_S):
        await pipe.closed.wait()
    assert processes(mark) == [], "a process of the session outlived it"  # its wrapper's pid included


async def running_session(srv: SandboxServer, client: SandboxClient, task: str) -> tuple[str, str, LongLived]:
    lease = await client.acquire(task)
    mark = session_prog.marker()
    assert (await session_prog.start(client, lease, mark)).started
    assert (await client.call(lease, {"op": "count"})).reply == {"count": 1}
    pipe = pipe_of(srv, lease.id)
    found = processes(mark)
    assert pipe.pid in found and len(found) >= 2, found  # the wrapper and what runs inside
    return lease.id, mark, pipe


async def test_a_session_keeps_its_state_between_calls_and_calls_take_turns(
        server: SandboxServer, client: SandboxClient) -> None:
    lease_id, _, _ = await running_session(server, client, "state")
    assert (await client.call(lease_id, {"op": "count"})).reply == {"count": 2}
    values = [f"v{i}\n\"quoted\" ☃" for i in range(20)]
    replies = await asyncio.gather(*(client.call(lease_id, {"op": "echo", "value": v}) for v in values))
    assert [r.reply for r in replies] == [{"echo": v} for v in values]
    got = await client.call(lease_id, {"op": "count"})
    assert got.reply == {"count": 3} and not got.restarted and got.generation == 1
    status = await client.status()
    assert status["sessions"] == 1 and status["session_calls"] == 23 and status["executions"] == 0


async def test_a_session_is_killed_when_its_lease_is_released(
        server: SandboxServer, client: SandboxClient) -> None:
    lease_id, mark, pipe = await running_session(server, client, "release")
    assert await client.release(lease_id)
    await assert_gone(pipe, mark)
    with pytest.raises(LeaseGone):
        await client.call(lease_id, {"op": "count"})
    assert (await client.status())["sessions"] == 0


async def test_a_session_is_killed_when_its_lease_is_reclaimed() -> None:
    clock = Clock()
    svc = SandboxService(SandboxConfig(pool_size=1, ttl_s=30), clock=clock)
    async with SandboxServer(svc.config, service=svc) as srv, SandboxClient(srv.url) as client:
        lease_id, mark, pipe = await running_session(srv, client, "doomed")
        clock.now += 31  # its worker died: nobody renews
        assert svc.reap() == 1
        await assert_gone(pipe, mark)
        with pytest.raises(LeaseGone):
            await client.call(lease_id, {"op": "count"})


async def test_a_session_is_killed_when_the_server_stops() -> None:
    srv = await SandboxServer(SandboxConfig(pool_size=1)).start()
    try:
        async with SandboxClient(srv.url) as client:
            _, mark, pipe = await running_session(srv, client, "stop")
    finally:
        await srv.stop()
    assert pipe.exited.is_set()  # stop returned after the process had exited
    await assert_gone(pipe, mark)


async def test_a_session_that_dies_in_a_call_is_reported_then_restarted_without_its_state(
        server: SandboxServer, client: SandboxClient) -> None:
    lease_id, mark, pipe = await running_session(server, client, "dies")
    with pytest.raises(SessionDied, match=r"closed its stdout \(exited with status 3; stderr: "
                                          r"out of cheese\); the next call starts it again") as info:
        await client.call(lease_id, {"op": "exit", "code": 3, "say": "out of cheese"})
    assert type(info.value) is SessionDied and info.value.status == 409
    await assert_gone(pipe, mark)
    got = await client.call(lease_id, {"op": "count"})
    assert got.restarted and got.generation == 2 and got.reply == {"count": 1}  # state gone
    assert got.lost is not None and "exited with status 3" in got.lost
    again = await client.call(lease_id, {"op": "count"})
    assert not again.restarted and again.lost is None and again.reply == {"count": 2}
    status = await client.status()
    assert (status["session_deaths"], status["session_restarts"], status["session_starts"]) == (1, 1, 2)


async def test_a_session_that_exits_between_calls_is_restarted_by_the_next(
        server: SandboxServer, client: SandboxClient) -> None:
    lease_id, mark, pipe = await running_session(server, client, "quits")
    assert (await client.call(lease_id, {"op": "reply_then_exit"})).reply == {"bye": True}
    await assert_gone(pipe, mark)
    got = await client.call(lease_id, {"op": "count"})
    assert got.restarted and got.lost == "ended (exited with status 0)" and got.reply == {"count": 1}


async def test_a_hung_call_times_out_and_its_process_is_killed(
        server: SandboxServer, client: SandboxClient) -> None:
    lease_id, mark, pipe = await running_session(server, client, "hangs")
    started = time.monotonic()
    with pytest.raises(SessionTimeout, match="did not answer within 1 s"):
        await client.call(lease_id, {"op": "hang"}, timeout_s=1)
    assert 0.9 <= time.monotonic() - started < LIVE_S
    await assert_gone(pipe, mark)
    got = await client.call(lease_id, {"op": "count"})
    assert got.restarted and got.lost is not None and got.lost.startswith("did not answer within 1 s")
    assert got.reply == {"count": 1}
    assert (await client.status())["session_timeouts"] == 1


@pytest.mark.parametrize(("request_", "how"), [
    ({"op": "garbage"}, "wrote a reply that is not JSON: this is not JSON"),
    ({"op": "two"}, "wrote more than one line for one request"),
    ({"op": "big", "n": 1 << 20}, f"wrote a reply longer than {1 << 20} bytes"),
], ids=["not-json", "two-lines", "too-long"])
async def test_a_session_that_breaks_the_protocol_is_killed_and_restarted(
        server: SandboxServer, client: SandboxClient, request_: dict[str, object], how: str) -> None:
    lease_id, mark, pipe = await running_session(server, client, str(request_["op"]))
    assert (await client.call(lease_id, {"op": "blank"})).reply == {"blank": True}
    with pytest.raises(SessionDied, match=how):
        await client.call(lease_id, request_)
    await assert_gone(pipe, mark)
    got = await client.call(lease_id, {"op": "count"})
    assert got.restarted and got.reply == {"count": 1}


async def test_start_keeps_the_same_session_replaces_another_and_stop_kills(
        server: SandboxServer, client: SandboxClient) -> None:
    lease_id, mark, pipe = await running_session(server, client, "start")
    assert not (await session_prog.start(client, lease_id, mark)).started  # kept
    assert (await client.call(lease_id, {"op": "count"})).reply == {"count": 2}
    other = session_prog.marker()
    got = await session_prog.start(client, lease_id, other)
    assert got.started and got.generation == 2
    await assert_gone(pipe, mark)  # the old program was killed
    assert (await client.call(lease_id, {"op": "count"})).reply == {"count": 1}
    newer = pipe_of(server, lease_id)
    assert await client.stop_session(lease_id) is True
    await assert_gone(newer, other)
    assert await client.stop_session(lease_id) is False
    with pytest.raises(NoSession, match="no session on lease"):
        await client.call(lease_id, {"op": "count"})


async def test_session_errors_on_the_wire(server: SandboxServer, client: SandboxClient) -> None:
    lease = await client.acquire("wire")
    async with aiohttp.ClientSession() as http:
        async def post(path: str, body: object) -> tuple[int, dict[str, object]]:
            async with http.post(server.url + path, json=body) as resp:
                return resp.status, await resp.json()

        status, doc = await post("/sessions/call", {"lease": lease.id, "request": {"op": "count"}})
        assert status == 409 and doc["session"] == "none" and "no session on lease" in str(doc["error"])
        status, doc = await post("/sessions/call", {"lease": lease.id})
        assert status == 400 and doc["field"] == "request"
        status, doc = await post("/sessions/start", {"lease": lease.id})
        assert status == 400 and doc["field"] == "argv"
        status, doc = await post("/sessions/start", {"lease": lease.id, "argv": ["true"],
                                                     "files": {"../x": ""}})
        assert status == 400 and doc["field"] == "files"
        status, doc = await post("/sessions/call", {"lease": "nope", "request": 1})
        assert status == 404 and doc["field"] == "lease"
        # Matrix's field names work here too; a JSON request spread over lines is one line.
        status, doc = await post("/sessions/start", {"container_id": lease.id,
                                                     "cmd": session_prog.argv("x")})
        assert status == 200 and doc["started"] is True
        async with http.post(server.url + "/sessions/call", data=b'{"container_id": "%s", '
                             b'"request": {"op":\n "echo",\r\n "value": [1,\n2]}, "timeout": 5}'
                             % lease.id.encode()) as resp:
            assert resp.status == 200
            assert (await resp.json())["reply"] == {"echo": [1, 2]}
        async with http.get(server.url + "/metrics") as resp:
            text = await resp.text()
    assert "matrix_p2p_sandbox_sessions 1.0" in text
    assert "matrix_p2p_sandbox_session_calls_total 1.0" in text


async def test_a_session_call_in_flight_keeps_its_lease_from_being_reclaimed() -> None:
    clock = Clock()
    svc = SandboxService(SandboxConfig(pool_size=1, ttl_s=30), clock=clock)
    async with SandboxServer(svc.config, service=svc) as srv, SandboxClient(srv.url) as client:
        lease_id, _, _ = await running_session(srv, client, "busy")
        call = asyncio.create_task(client.call(lease_id, {"op": "hang"}, timeout_s=2))
        async with asyncio.timeout(LIVE_S):
            while svc.pool.get(lease_id).busy == 0:  # noqa: ASYNC110 - no event for "arrived"
                await asyncio.sleep(0.01)
        clock.now += 31
        assert svc.reap() == 0  # busy with the call
        with pytest.raises(SessionTimeout):
            await call
        assert svc.pool.get(lease_id).expires_at > clock.now  # the call's end renewed it


def test_sessions_under_uvloop() -> None:
    """``run`` serves the sandbox on uvloop, whose process transports are not asyncio's."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        async with SandboxServer(SandboxConfig(pool_size=1)) as srv, \
                SandboxClient(srv.url) as client:
            lease_id, mark, pipe = await running_session(srv, client, "uvloop")
            with pytest.raises(SessionDied, match="exited with status 3"):
                await client.call(lease_id, {"op": "exit", "code": 3})
            await assert_gone(pipe, mark)
            got = await client.call(lease_id, {"op": "count"})
            assert got.restarted and got.reply == {"count": 1}
            pipe = pipe_of(srv, lease_id)
            with pytest.raises(SessionTimeout):
                await client.call(lease_id, {"op": "hang"}, timeout_s=0.5)
            await assert_gone(pipe, mark)
            assert (await client.call(lease_id, {"op": "count"})).restarted
            pipe = pipe_of(srv, lease_id)
            assert await client.release(lease_id)
            await assert_gone(pipe, mark)

    uvloop.run(scenario())
