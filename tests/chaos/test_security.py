"""A secured broker: refused connections get one clear line; secrets never leak."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from matrix_p2p.broker import EmbeddedNats
from tests.chaos.harness import (
    Proc,
    check_exactly_once,
    child_env,
    expected_ids,
    mx,
    processes,
    status_json,
    wait_for,
    write_workflow,
)

pytestmark = pytest.mark.chaos

WF = """
roles:
  a: {agent: "matrix_p2p_agents.dummy:Talker", llm: null, concurrency: 20}
  b: {agent: "matrix_p2p_agents.dummy:Decider", llm: null, concurrency: 20, options: {p_stop: 0.7}}
routing: {type: cycle, roles: [a, b], stop_when: agreed, max_turns: 10}
"""


def test_user_password(tmp_path: Path) -> None:
    password = "pw-" + secrets.token_hex(12)
    wf = write_workflow(tmp_path, "secured", WF, [{"n": i} for i in range(30)])
    out = tmp_path / "out.jsonl"
    with EmbeddedNats(store_dir=tmp_path / "nats", sync="interval", user="mx",
                      password=password) as server:
        url = server.url
        # wrong password: one line, exit 1, no traceback, the attempted secret not echoed
        bad_env = child_env(MX_NATS_PASSWORD="wrong-" + password)
        r = mx("status", str(wf), "--nats", url, "--nats-user", "mx", env=bad_env, timeout=60)
        assert r.returncode == 1
        assert r.stderr.strip().splitlines()[-1] == (
            f"matrix_p2p: error: cannot connect to NATS at {url}: authorization refused "
            "(check user/password, token, NKey or creds)")
        assert "Traceback" not in r.stderr and password not in r.stderr + r.stdout
        # no credentials at all: refused the same way
        r = mx("status", str(wf), "--nats", url, timeout=60)
        assert r.returncode == 1 and "authorization refused" in r.stderr
        # right password from the environment (the default MX_NATS_PASSWORD, and a named var)
        good = child_env(MX_NATS_PASSWORD=password)
        good_env_user = child_env(MX_NATS_USER="mx", MX_NATS_PASSWORD=password)
        named = child_env(MY_SECRET=password)
        with processes() as ps:
            w = Proc(["worker", str(wf), "--role", "all", "--nats", url,
                      "--nats-user", "mx", "--log-level", "debug"], tmp_path / "w.log", env=good)
            ps.append(w)
            wait_for(lambda: bool(w.events("worker.ready")), 30, "the worker to be ready")
            cmdline = Path(f"/proc/{w.pid}/cmdline").read_bytes()
            assert password.encode() not in cmdline  # not in `ps`
            sub = mx("submit", str(wf), "--nats", url, "--nats-user", "mx",
                     "--nats-password-env", "MY_SECRET", env=named)
            assert sub.returncode == 0, sub.stderr
            sink = mx("sink", str(wf), "--nats", url, "--nats-user", "mx", "--out", str(out),
                      "--expect", "30", "--timeout", "60", env=good, timeout=90)
            assert sink.returncode == 0, sink.stderr
            st = status_json(wf, url, env=good_env_user)  # user from MX_NATS_USER
            assert w.stop() == 0
            logs = w.text() + sub.stderr + sub.stdout + sink.stderr + sink.stdout
            assert '"worker.ready"' in logs and f'"nats": "{url}"' in logs
            assert password not in logs  # not in logs, even at debug level
        check_exactly_once(out, expected_ids(wf), st)
        conf = next(server.store_dir.glob("nats-*.conf"))
        assert conf.stat().st_mode & 0o077 == 0  # the server's config holds it: owner only


def test_token(tmp_path: Path) -> None:
    token = "tok-" + secrets.token_hex(12)
    wf = write_workflow(tmp_path, "tokened", WF, [{"n": 1}])
    with EmbeddedNats(store_dir=tmp_path / "nats", sync="interval", token=token) as server:
        r = mx("status", str(wf), "--nats", server.url, env=child_env(MX_NATS_TOKEN="nope"),
               timeout=60)
        assert r.returncode == 1 and "authorization refused" in r.stderr
        assert "nope" not in r.stderr
        r = mx("status", str(wf), "--nats", server.url, env=child_env(MX_NATS_TOKEN=token))
        assert r.returncode == 0, r.stderr
        assert token not in r.stderr + r.stdout
