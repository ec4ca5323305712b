"""The retail environment as a session (``env.py serve``) against a process per call
(``env.py call``), both run as subprocesses the way a sandbox runs them, and the tool
executor's handling of session failures (``roles.env_call``) on a stand-in sandbox."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from matrix_p2p_agents.tau import roles, sandbox_env
from matrix_p2p_agents.tau.retail_db import bundled_db_path, db_hash, load_db

from matrix_p2p.envelope import Lease, Task
from matrix_p2p.errors import FailTask
from matrix_p2p.sandbox import NoSession, SessionDied, SessionReply, SessionStarted, SessionTimeout
from tests.tau_calls import Call, fixed_calls

# By path in this tree (not the installed package: ``tests.mutate`` breaks a copy of the tree).
ENV_PATH = str(Path(__file__).resolve().parents[2] / "agents" / "tau" / "env.py")
Expected = tuple[list[tuple[bool, str]], str, bytes]  # per-call results, final hash, db.json


def per_call(cwd: Path, calls: list[Call]) -> tuple[list[tuple[bool, str]], str]:
    """Today's way: ``init``, then one process per call. The results and the final hash."""
    def run(*args: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-I", "-S", ENV_PATH, *args], cwd=cwd,
                              capture_output=True, text=True, timeout=60, check=True)
        out: dict[str, Any] = json.loads(done.stdout)
        return out

    run("init", "--db", "db.json")
    results = []
    for name, arguments in calls:
        out = run("call", "--db", "db.json", name, json.dumps(arguments))
        results.append((out["ok"], out["output"]))
    return results, run("hash", "--db", "db.json")["output"]


def serve(cwd: Path, requests: list[Any]) -> list[dict[str, Any]]:
    """One session process: every request line in, every reply line out, then stdin closes."""
    lines = "".join(json.dumps(r) + "\n" for r in requests)
    done = subprocess.run([sys.executable, "-I", "-S", ENV_PATH, "serve", "--db", "db.json"],
                          cwd=cwd, input=lines, capture_output=True, text=True, timeout=60, check=True)
    return [json.loads(line) for line in done.stdout.splitlines()]


def session(cwd: Path, calls: list[Call], split: int | None = None) -> tuple[list[tuple[bool, str]], str]:
    """The calls through one session, or two (the second started where the first stopped)."""
    requests = [sandbox_env.call(name, arguments) for name, arguments in calls]
    cut = len(requests) if split is None else split
    replies = serve(cwd, requests[:cut]) + serve(cwd, [*requests[cut:], sandbox_env.HASH])
    assert len(replies) == len(calls) + 1
    assert all(r["db_hash"] is None for r in replies[:-1])  # no hashing per call
    return [(r["ok"], r["output"]) for r in replies[:-1]], replies[-1]["output"]


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> Expected:
    where = tmp_path_factory.mktemp("per-call")
    results, final = per_call(where, fixed_calls())
    return results, final, (where / "db.json").read_bytes()


def test_the_fixed_calls_write_read_back_and_fail(expected: Expected) -> None:
    results, final, _ = expected
    assert sum(ok for ok, _ in results) >= 30 and sum(not ok for ok, _ in results) >= 8
    assert final != db_hash(load_db(bundled_db_path()))  # the writes changed the database


@pytest.mark.parametrize("split", [None, 7, 30], ids=["one-session", "restart-after-7", "restart-after-30"])
def test_a_session_answers_byte_for_byte_what_a_process_per_call_prints(
        tmp_path: Path, expected: Expected, split: int | None) -> None:
    results, final, db_bytes = expected
    got, got_final = session(tmp_path, fixed_calls(), split)
    for i, ((ok, out), (want_ok, want)) in enumerate(zip(got, results, strict=True)):
        assert (ok, out) == (want_ok, want), f"call {i}: {fixed_calls()[i]}"
    assert got_final == final  # what the reward compares
    assert (tmp_path / "db.json").read_bytes() == db_bytes


def test_a_session_reports_bad_requests_and_keeps_going(tmp_path: Path) -> None:
    replies = serve(tmp_path, [sandbox_env.PING, "not an object", {"op": "frobnicate"},
                               {"op": "call", "tool": ["x"]}, sandbox_env.HASH])
    assert [r["output"] for r in replies[:4]] == [
        "ready",
        "Error: bad request: unknown op None",
        "Error: bad request: unknown op 'frobnicate'",
        "Error: unknown tool ['x']",
    ]
    assert replies[4]["output"] == db_hash(load_db(bundled_db_path()))
    done = subprocess.run([sys.executable, "-I", "-S", ENV_PATH, "serve", "--db", "db.json"],
                          cwd=tmp_path, input="{not json\n", capture_output=True, text=True,
                          timeout=60, check=True)
    assert json.loads(done.stdout)["output"].startswith("Error: bad request: ")


def test_a_broken_database_file_stops_the_session_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "db.json").write_text("{")
    done = subprocess.run([sys.executable, "-I", "-S", ENV_PATH, "serve", "--db", "db.json"],
                          cwd=tmp_path, input="", capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("Error: cannot read database 'db.json': ")


# -- the tool executor over a stand-in sandbox ---------------------------------------------
LEASE = Lease(kind="env", ref="L1", expires_at=0.0, where="http://sandbox")


class Box:
    """A ``Sandbox`` stand-in: records what the role asks, answers from a script."""

    def __init__(self, *answers: SessionReply | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[Any] = []
        self.starts = 0

    async def lease(self) -> Lease:
        return LEASE

    async def start_session(self, argv: list[str], **_: Any) -> tuple[SessionStarted, Lease]:
        assert argv == sandbox_env.session_argv()
        self.starts += 1
        return SessionStarted(started=True), LEASE

    async def call(self, request: Any) -> tuple[SessionReply, Lease]:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer, LEASE


def ok(output: str, **kw: Any) -> SessionReply:
    return SessionReply(reply={"ok": True, "output": output, "db_hash": None}, **kw)


def task() -> Task:
    return Task(id="t", workflow="tau", role="assistant", state={"env_sandbox": "L1"})


CALL = sandbox_env.call("get_order_details", {"order_id": "#W1"})


@pytest.mark.parametrize(("answer", "want"), [
    (SessionTimeout("session of lease 'L1' did not answer within 20 s"), "Error: the tool timed out"),
    (SessionDied("session of lease 'L1' closed its stdout (exited with status 1)"),
     "Error: the environment failed: session of lease 'L1' closed its stdout (exited with status 1)"),
    (SessionReply(reply="garbage"), "Error: the environment failed: not an environment result: 'garbage'"),
])
async def test_a_failed_session_call_is_a_tool_error(answer: SessionReply | Exception, want: str) -> None:
    got = await roles.env_call(task(), Box(answer), CALL)  # type: ignore[arg-type]
    assert got[:3] == (False, want, LEASE)


async def test_a_restarted_session_is_said_in_the_turn_meta() -> None:
    reply = ok("{}", restarted=True, lost="ended (killed by SIGKILL)", elapsed_s=0.002)
    got = await roles.env_call(task(), Box(reply), CALL)  # type: ignore[arg-type]
    assert got == (True, "{}", LEASE, {"exec_s": 0.002, "session_restarted": "ended (killed by SIGKILL)"})


async def test_a_lost_session_on_a_held_lease_is_started_again() -> None:
    box = Box(NoSession("no session on lease 'L1'"), ok("ready"), ok("{}"))
    t = task()
    got = await roles.env_call(t, box, CALL)  # type: ignore[arg-type]
    assert got[:2] == (True, "{}")
    assert box.starts == 1 and box.requests == [CALL, sandbox_env.PING, CALL]
    assert t.state["env_sandbox"] == "L1"


async def test_the_environment_is_set_up_once_per_lease_and_a_broken_one_fails_the_task() -> None:
    t = Task(id="t", workflow="tau", role="assistant")
    box = Box(ok("ready"), ok("{}"), ok("{}"))
    for _ in range(2):
        await roles.env_call(t, box, CALL)  # type: ignore[arg-type]
    assert box.starts == 1 and box.requests == [sandbox_env.PING, CALL, CALL]
    broken = Box(SessionDied("session of lease 'L1' closed its stdout (exited with status 1; stderr: "
                             "SyntaxError)"))
    with pytest.raises(FailTask, match=r"cannot set up the environment in sandbox L1: .*SyntaxError"):
        await roles.env_call(Task(id="t2", workflow="tau", role="assistant"), broken, CALL)  # type: ignore[arg-type]
