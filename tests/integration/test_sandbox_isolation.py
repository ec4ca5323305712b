"""Containment against real bubblewrap: a real server on a free 127.0.0.1 port, a real client.

Each guard is checked for one-shot executions (``/execute``) and for sessions
(``/sessions/...``: a long-lived program in the lease's sandbox, confined the same way).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from matrix_p2p.sandbox import Lease, Limits, SandboxClient, SandboxConfig, SandboxServer, SessionDied
from matrix_p2p.sandbox.runner import TRUNCATION_NOTE
from tests.integration import session_prog

LIMITS = Limits(cpu_s=20, memory_bytes=512 << 20, nproc=64, fsize_bytes=8 << 20, output_bytes=4096,
                tmp_bytes=8 << 20)
AS_ROOT = os.geteuid() == 0


@pytest.fixture
async def server() -> AsyncIterator[SandboxServer]:
    cfg = SandboxConfig(pool_size=2, limits=LIMITS, default_timeout_s=20)
    async with SandboxServer(cfg) as srv:
        yield srv


@pytest.fixture
async def client(server: SandboxServer) -> AsyncIterator[SandboxClient]:
    async with SandboxClient(server.url, acquire_timeout_s=10) as c:
        yield c


def processes(pred: str | int) -> list[int]:
    """Live (non-zombie) pids whose command line contains ``pred`` (str) or whose real uid is ``pred``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            if status["State"].strip().startswith("Z"):
                continue
            if isinstance(pred, int):
                hit = int(status["Uid"].split()[0]) == pred
            else:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    hit = pred.encode() in f.read()
        except (OSError, KeyError):
            continue
        if hit:
            found.append(int(entry))
    return found


def host_has(path: str) -> bool:
    return os.path.lexists(path)


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(next(line for line in f if line.startswith("PPid:")).split()[1])
    except (OSError, StopIteration, ValueError):
        return 0


def ours(pids: list[int]) -> list[int]:
    """The pids that descend from this test process (other sandbox servers on the machine,
    say another checkout's test run, use the same slot uids)."""
    me = os.getpid()
    found = []
    for pid in pids:
        p = pid
        while p > 1 and p != me:
            p = _ppid(p)
        if p == me:
            found.append(pid)
    return found


def slot_uid(server: SandboxServer, lease_id: str) -> int:
    slot = server.service.pool.get(lease_id).slot
    return server.service.config.uid_base + slot


async def test_network_is_unreachable(server: SandboxServer, client: SandboxClient) -> None:
    lease = await client.acquire("net")
    probe = (
        "import socket,sys\n"
        "for host, port in [('1.1.1.1', 80), ('127.0.0.1', int(sys.argv[1]))]:\n"
        "    s = socket.socket(); s.settimeout(2)\n"
        "    print(host, s.connect_ex((host, port)))\n"
        "print(sorted(n for _, n in socket.if_nameindex()))\n"
    )
    res = await client.execute(lease, ["python3", "-c", probe, str(server.port)], timeout_s=10)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] != "1.1.1.1 0" and lines[1] != "127.0.0.1 0"  # not even the server itself
    assert lines[2] == "['lo']"


async def test_writes_outside_the_work_dir_fail(client: SandboxClient) -> None:
    lease = await client.acquire("ro")
    marker = f"mx-sandbox-{uuid.uuid4().hex}"
    script = (
        "for p in /usr/x /etc/x /x /dev/x /bin/x /proc/x; do touch $p 2>/dev/null && echo WROTE $p; done; "
        f"touch /work/ok && touch /tmp/{marker} && echo fine"
    )
    res = await client.execute(lease, cmd=script)
    assert res.stdout.strip() == "fine", res.stdout + res.stderr
    assert not host_has(f"/tmp/{marker}")  # the sandbox's /tmp is its own
    res = await client.execute(lease, cmd=f"ls /tmp/{marker}")
    assert res.returncode != 0  # and lives for one execution only


async def test_work_dir_persists_between_executions_and_is_wiped_on_release(
    server: SandboxServer, client: SandboxClient
) -> None:
    lease = await client.acquire("state")
    slot = server.service.pool.get(lease.id).slot
    res = await client.execute(lease, cmd="mkdir -p db && echo 41 > db/n", files={"tool.py": "print(1)"})
    assert res.returncode == 0, res.stderr
    res = await client.execute(lease, ["python3", "-c", "n = int(open('db/n').read()); print(n + 1)"])
    assert res.stdout == "42\n"
    host_dir = Path(server.service.work_dir(slot))
    assert (host_dir / "db" / "n").read_text() == "41\n" and (host_dir / "tool.py").exists()
    assert await client.release(lease)
    assert not await client.release(lease)  # a second release: nothing to do
    # Take both slots so the one just released (once cleaned) is among them.
    again = [await client.acquire("next"), await client.acquire("next")]
    for other in again:
        res = await client.execute(other, cmd="ls -A")
        assert res.stdout == ""


async def test_timeout_kills_the_whole_process_tree(server: SandboxServer, client: SandboxClient) -> None:
    lease = await client.acquire("slow")
    mark = f"600.{uuid.uuid4().int % 10**12:012d}"  # sleep takes fractional seconds: a unique argv
    script = f"sleep {mark}1 & setsid sleep {mark}2 & (trap '' TERM HUP; sleep {mark}3) & sleep {mark}"
    started = time.monotonic()
    run = asyncio.create_task(client.execute(lease, cmd=script, timeout_s=2))
    async with asyncio.timeout(5):  # the check below can see them while they run
        while len(processes(mark)) < 4:  # noqa: ASYNC110 - /proc has no event to wait on
            await asyncio.sleep(0.02)
    res = await run
    assert res.timed_out and res.returncode == -9, res
    assert 1.9 <= time.monotonic() - started < 6
    assert processes(mark) == []
    if AS_ROOT:
        assert ours(processes(slot_uid(server, lease.id))) == []
    assert server.service.runner.running(server.service.pool.get(lease.id).slot) == 0
    res = await client.execute(lease, cmd="echo alive")
    assert res.stdout == "alive\n" and (await client.status())["timeouts"] == 1


async def test_a_fork_bomb_is_contained(server: SandboxServer, client: SandboxClient) -> None:
    lease = await client.acquire("bomb")
    started = time.monotonic()
    res = await client.execute(lease, cmd="b(){ b | b & }; b; sleep 3", timeout_s=4)
    assert time.monotonic() - started < 10
    assert "fork" in res.stderr.lower() or "resource temporarily unavailable" in res.stderr.lower(), res
    if AS_ROOT:
        assert ours(processes(slot_uid(server, lease.id))) == []
    ok = await client.execute(lease, cmd="echo still here")
    assert ok.stdout == "still here\n"
    status = await client.status()
    assert status["free"] + status["leased"] == 2


async def test_a_memory_hog_is_contained(client: SandboxClient) -> None:
    lease = await client.acquire("hog")
    hog = "x = []\nwhile True:\n    x.append(bytearray(64 << 20))\n"
    res = await client.execute(lease, ["python3", "-c", hog], timeout_s=20)
    assert not res.timed_out and res.returncode != 0
    assert "MemoryError" in res.stderr
    res = await client.execute(lease, ["python3", "-c", "bytearray(4 << 30)"])
    assert "MemoryError" in res.stderr


async def test_a_big_file_hits_the_size_limit(client: SandboxClient) -> None:
    lease = await client.acquire("disk")
    res = await client.execute(lease, cmd="head -c 20000000 /dev/zero > big; echo $?; ls -l big")
    assert res.stdout.splitlines()[0] != "0"
    assert str(LIMITS.fsize_bytes) in res.stdout


async def test_output_beyond_the_limit_is_truncated_and_says_so(client: SandboxClient) -> None:
    lease = await client.acquire("chatty")
    res = await client.execute(lease, cmd="head -c 1000000 /dev/zero | tr '\\0' a; echo err >&2")
    limit = LIMITS.output_bytes
    assert res.stdout_truncated and not res.stderr_truncated
    assert res.stdout.startswith("a" * limit)
    assert res.stdout[limit:] == TRUNCATION_NOTE.format(total=1_000_000, limit=limit)
    assert res.stderr == "err\n" and res.returncode == 0
    assert res.output == res.stdout + res.stderr


async def test_sandbox_runs_as_an_unprivileged_user(server: SandboxServer, client: SandboxClient) -> None:
    lease = await client.acquire("who")
    res = await client.execute(lease, cmd="id -u; cat /proc/self/status | grep CapEff; hostname")
    uid, caps, host = res.stdout.split("\n")[:3]
    assert uid == "1000" and caps.split()[-1] == "0000000000000000" and host == "sandbox"
    if AS_ROOT:  # seen from the host, each slot is its own unprivileged uid
        res2 = await client.execute(lease, cmd="sleep 5", timeout_s=0.5)
        assert res2.timed_out
        host_dir = server.service.work_dir(server.service.pool.get(lease.id).slot)
        assert os.stat(host_dir).st_uid == slot_uid(server, lease.id)


# -- sessions: the same confinement for a long-lived program -----------------------------
async def in_session(client: SandboxClient, lease: Lease, code: str) -> dict[str, str]:
    """Run ``code`` inside the lease's session (started if need be); its prints and error."""
    await client.start_session(lease, session_prog.argv("isolation"))
    got = await client.call(lease, {"op": "exec", "code": code}, timeout_s=20)
    assert isinstance(got.reply, dict)
    return got.reply


async def test_a_session_cannot_reach_the_network(server: SandboxServer, client: SandboxClient) -> None:
    lease = await client.acquire("session-net")
    code = (
        "import socket\n"
        f"for host, port in [('1.1.1.1', 80), ('127.0.0.1', {server.port})]:\n"
        "    s = socket.socket(); s.settimeout(2)\n"
        "    print(host, s.connect_ex((host, port)))\n"
        "print(sorted(n for _, n in socket.if_nameindex()))\n"
    )
    lines = (await in_session(client, lease, code))["out"].splitlines()
    assert lines[0] != "1.1.1.1 0" and lines[1] != "127.0.0.1 0"  # not even the server itself
    assert lines[2] == "['lo']"


async def test_a_session_writes_only_its_work_dir_and_its_own_tmp(
        server: SandboxServer, client: SandboxClient) -> None:
    lease = await client.acquire("session-ro")
    marker = f"mx-sandbox-{uuid.uuid4().hex}"
    code = (
        "import os\n"
        "for p in ['/usr/x', '/etc/x', '/x', '/dev/x', '/bin/x', '/proc/x']:\n"
        "    try:\n"
        "        open(p, 'w').close(); print('WROTE', p)\n"
        "    except OSError:\n"
        "        pass\n"
        f"open('/tmp/{marker}', 'w').close()\n"
        "open('/work/from-session', 'w').write('s')\n"
        "print(os.getcwd(), sorted(os.listdir('/work')))\n"
    )
    got = await in_session(client, lease, code)
    assert got == {"out": "/work ['from-session']\n"}, got
    assert not host_has(f"/tmp/{marker}")  # the session's /tmp is its own
    res = await client.execute(lease, cmd=f"cat from-session; ls /tmp/{marker}")
    assert res.stdout == "s" and res.returncode != 0  # the work dir is the lease's, /tmp is not
    host_dir = Path(server.service.work_dir(server.service.pool.get(lease.id).slot))
    assert (host_dir / "from-session").read_text() == "s"


async def test_a_session_has_the_rlimits_and_a_memory_hog_is_contained(client: SandboxClient) -> None:
    lease = await client.acquire("session-limits")
    code = (
        "import resource as r\n"
        "for n in ('RLIMIT_AS', 'RLIMIT_NPROC', 'RLIMIT_FSIZE', 'RLIMIT_NOFILE', 'RLIMIT_CPU', "
        "'RLIMIT_CORE'):\n"
        "    print(n, *r.getrlimit(getattr(r, n)))\n"
    )
    limits = dict(line.split(" ", 1) for line in (await in_session(client, lease, code))["out"].splitlines())
    assert limits == {
        "RLIMIT_AS": f"{LIMITS.memory_bytes} {LIMITS.memory_bytes}",
        "RLIMIT_NPROC": f"{LIMITS.nproc} {LIMITS.nproc}",
        "RLIMIT_FSIZE": f"{LIMITS.fsize_bytes} {LIMITS.fsize_bytes}",
        "RLIMIT_NOFILE": "256 256",
        "RLIMIT_CPU": f"{LIMITS.cpu_s} {LIMITS.cpu_s}",  # the whole budget, for the session's life
        "RLIMIT_CORE": "0 0",
    }
    hog = "x = []\nwhile True:\n    x.append(bytearray(64 << 20))\n"
    assert (await in_session(client, lease, hog))["error"] == "MemoryError: "
    assert (await in_session(client, lease, "print('still here')"))["out"] == "still here\n"


async def test_a_session_runs_as_an_unprivileged_user(server: SandboxServer, client: SandboxClient) -> None:
    lease = await client.acquire("session-who")
    code = (
        "import os, socket\n"
        "caps = [l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[-1]\n"
        "print(os.getuid(), caps, socket.gethostname())\n"
    )
    assert (await in_session(client, lease, code))["out"] == "1000 0000000000000000 sandbox\n"
    if AS_ROOT:  # seen from the host, the session runs as the slot's own unprivileged uid
        pids = ours(processes(slot_uid(server, lease.id)))
        assert server.service.sessions.pipes[lease.id].pid in pids


async def test_a_session_past_its_cpu_budget_is_killed_and_restarted() -> None:
    cfg = SandboxConfig(pool_size=1, limits=Limits(cpu_s=1))
    async with SandboxServer(cfg) as srv, SandboxClient(srv.url) as client:
        lease = await client.acquire("session-cpu")
        with pytest.raises(SessionDied, match=r"closed its stdout \(exited with status \d+, "
                                              r"SIG(KILL|XCPU) inside the sandbox\)"):
            await in_session(client, lease, "while True:\n    pass\n")
        got = await client.call(lease, {"op": "exec", "code": "print('back')"})
        assert got.restarted and got.reply == {"out": "back\n"}
