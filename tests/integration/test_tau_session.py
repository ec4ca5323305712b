"""The retail environment in real sandboxes: a session answers what a process per call
(``/execute``, the way before sessions) answers, byte for byte, and leaves the same database."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from matrix_p2p_agents.tau import sandbox_env

from matrix_p2p.sandbox import Lease, SandboxClient, SandboxConfig, SandboxServer
from tests.tau_calls import fixed_calls


@pytest.fixture
async def server() -> AsyncIterator[SandboxServer]:
    async with SandboxServer(SandboxConfig(pool_size=2)) as srv:
        yield srv


def db_file(srv: SandboxServer, lease: Lease) -> bytes:
    return (Path(srv.service.work_dir(srv.service.pool.get(lease.id).slot)) / "db.json").read_bytes()


async def test_tool_results_and_the_final_database_are_those_of_a_process_per_call(
        server: SandboxServer) -> None:
    calls = fixed_calls()
    async with SandboxClient(server.url) as client:
        old, new = await client.acquire("per-call"), await client.acquire("session")

        init = await client.execute(old, sandbox_env.argv("init"), files=sandbox_env.files())
        assert sandbox_env.parse_result(init.stdout).ok, init.stderr
        expected = []
        for name, arguments in calls:
            res = await client.execute(old, sandbox_env.argv("call", name, json.dumps(arguments)))
            parsed = sandbox_env.parse_result(res.stdout)
            expected.append((parsed.ok, parsed.output))
        final = sandbox_env.parse_result((await client.execute(old, sandbox_env.argv("hash"))).stdout)

        assert (await client.start_session(new, sandbox_env.session_argv(),
                                           files=sandbox_env.files())).started
        assert (await client.call(new, sandbox_env.PING)).reply["output"] == "ready"
        got = []
        for i, (name, arguments) in enumerate(calls):
            if i == len(calls) // 2:  # the process dies mid-trajectory: the next call restarts it
                pipe = server.service.sessions.pipes[new.id]
                pipe.kill()
                async with asyncio.timeout(10):
                    await pipe.exited.wait()
            reply = await client.call(new, sandbox_env.call(name, arguments))
            assert reply.restarted == (i == len(calls) // 2), (i, reply)
            result = sandbox_env.reply_result(reply.reply)
            got.append((result.ok, result.output))
        session_final = sandbox_env.reply_result((await client.call(new, sandbox_env.HASH)).reply)
        status = await client.status()

    for i, (have, want) in enumerate(zip(got, expected, strict=True)):
        assert have == want, f"call {i}: {calls[i]}"
    assert session_final.output == session_final.db_hash == final.output  # what the reward compares
    assert db_file(server, new) == db_file(server, old)
    assert status["session_restarts"] == 1 and status["executions"] == len(calls) + 2
