"""The environment command, run as a subprocess the way a sandbox runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import matrix_p2p_agents.tau.env as env_module
import pytest
from matrix_p2p_agents.tau.retail_db import bundled_db_path, db_hash, load_db
from matrix_p2p_agents.tau.retail_tools import openai_schemas
from matrix_p2p_agents.tau.reward import evaluate
from matrix_p2p_agents.tau.tasks import load_tasks

ENV_PATH = Path(env_module.__file__).resolve()
REPO = ENV_PATH.parents[2]


def run_env(cwd: Path, *args: str, by_path: bool = False) -> tuple[int, Any]:
    """One command; by path with a bare, isolated interpreter (no site-packages, no repo on the path)."""
    if by_path:
        argv = [sys.executable, "-I", "-S", str(ENV_PATH), *args]
    else:
        argv = [sys.executable, "-m", "matrix_p2p_agents.tau.env", *args]
    env = {"PYTHONPATH": str(REPO)} if not by_path else {}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)
    return done.returncode, json.loads(done.stdout) if done.stdout else done.stderr


@pytest.mark.parametrize("by_path", [False, True])
def test_round_trip_of_a_task_through_the_cli(tmp_path: Path, by_path: bool) -> None:
    task = next(t for t in load_tasks() if t.kind == "cancel_and_return")
    rc, out = run_env(tmp_path, "init", "--db", "db.json", by_path=by_path)
    assert rc == 0 and out == {
        "ok": True,
        "output": "initialized",
        "db_hash": db_hash(load_db(bundled_db_path())),
    }
    for action in task.expected_actions:
        rc, out = run_env(
            tmp_path, "call", "--db", "db.json", action.name, json.dumps(action.arguments), by_path=by_path
        )
        assert rc == 0 and out["ok"], out
    rc, out = run_env(tmp_path, "hash", "--db", "db.json", by_path=by_path)
    assert rc == 0 and out["output"] == out["db_hash"] == db_hash(load_db(tmp_path / "db.json"))
    reward = evaluate(
        task,
        initial_db=load_db(bundled_db_path()),
        final_db_hash=out["db_hash"],
        assistant_messages=[" ".join(task.communicate_info)],
    )
    assert (reward.reward, reward.db_match) == (1.0, True)


def test_tool_errors_are_results_and_leave_the_file_alone(tmp_path: Path) -> None:
    run_env(tmp_path, "init", "--db", "db.json")
    before = (tmp_path / "db.json").read_bytes()
    delivered = next(
        o for o in load_db(tmp_path / "db.json")["orders"].values() if o["status"] == "delivered"
    )
    args = json.dumps({"order_id": delivered["order_id"], "reason": "no longer needed"})
    rc, out = run_env(tmp_path, "call", "--db", "db.json", "cancel_pending_order", args)
    assert rc == 0
    assert out == {
        "ok": False,
        "output": "Error: non-pending order cannot be cancelled",
        "db_hash": db_hash(load_db(tmp_path / "db.json")),
    }
    rc, out = run_env(tmp_path, "call", "--db", "db.json", "get_order_details", '{"order_id": "#W1')
    assert rc == 0 and out["ok"] is False
    assert out["output"].startswith("Error: arguments are not valid JSON: ")
    rc, out = run_env(tmp_path, "call", "--db", "db.json", "no_such_tool", "{}")
    assert out["output"] == "Error: unknown tool 'no_such_tool'"
    assert (tmp_path / "db.json").read_bytes() == before


def test_missing_database_and_usage_errors(tmp_path: Path) -> None:
    rc, out = run_env(tmp_path, "hash", "--db", "nope.json", by_path=True)
    assert rc == 1
    assert out == {
        "ok": False,
        "output": "Error: cannot read database 'nope.json': [Errno 2] No such file or directory: 'nope.json'",
        "db_hash": None,
    }
    rc, err = run_env(tmp_path, "frobnicate", by_path=True)
    assert rc == 2 and "invalid choice: 'frobnicate'" in err


def test_schemas_command_prints_the_tool_schemas(tmp_path: Path) -> None:
    rc, out = run_env(tmp_path, "schemas", by_path=True)
    assert rc == 0 and out == openai_schemas()


def test_command_and_parse_result_round_trip(tmp_path: Path) -> None:
    argv = env_module.command("init", python=sys.executable)
    assert argv[1:] == [str(ENV_PATH), "init", "--db", "db.json"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    result = env_module.parse_result(done.stdout)
    assert result == env_module.EnvResult(True, "initialized", db_hash(load_db(tmp_path / "db.json")))
    with pytest.raises(ValueError, match=r"^not an environment result: 'Traceback'$"):
        env_module.parse_result("Traceback")
