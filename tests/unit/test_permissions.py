"""Per-role NATS permissions computed from a workflow's routing (pure; the broker test is
tests/chaos/test_permissions.py)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from matrix_p2p.bus.fleet_kv import FLEET_BUCKET
from matrix_p2p.errors import ConfigError
from matrix_p2p.permissions import (
    ADMIN,
    all_users,
    nats_config,
    next_roles,
    password_env,
    passwords_for,
    workflow_users,
)
from matrix_p2p.permissions import (
    FLEET_BUCKET as PERMISSIONS_FLEET_BUCKET,
)
from matrix_p2p.workflow.spec import WorkflowSpec
from tests.conftest import make_spec

CYCLE = """
roles:
  teacher: {agent: "matrix_p2p_agents.dummy:Talker"}
  judge:   {agent: "matrix_p2p_agents.dummy:Decider", llm: null}
  student: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
  auditor: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
routing: {type: cycle, roles: [teacher, judge, student], max_turns: 6}
"""

PYTHON = """
roles:
  a: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
  b: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
routing: {type: python, router: "some.module:Router"}
"""


@pytest.fixture
def cycle(tmp_path: Path) -> WorkflowSpec:
    return make_spec(tmp_path, CYCLE, name="wf")


def users_by_name(spec: WorkflowSpec, **kw: bool) -> dict[str, tuple[tuple[str, ...], str]]:
    return {u.name: (u.publish, u.comment) for u in workflow_users(spec, **kw)}


def test_next_roles_follow_the_cycle(cycle: WorkflowSpec) -> None:
    reach, analysed = next_roles(cycle)
    assert analysed
    # auditor is outside the cycle: it never forwards (decide fails such a task)
    assert reach == {"teacher": ["judge"], "judge": ["student"], "student": ["teacher"], "auditor": []}


def test_a_role_consumes_its_own_subject_and_sends_only_where_routing_can(cycle: WorkflowSpec) -> None:
    pub, comment = users_by_name(cycle)["wf.role.judge"]
    assert "$JS.API.CONSUMER.MSG.NEXT.MX_WF_TASKS.judge" in pub
    assert "$JS.ACK.MX_WF_TASKS.judge.>" in pub
    assert "$JS.API.CONSUMER.INFO.MX_WF_TASKS.judge" in pub
    # the liveness check reads stored task messages and deletes a stuck copy it re-ran
    assert {"$JS.API.STREAM.MSG.GET.MX_WF_TASKS", "$JS.API.STREAM.MSG.DELETE.MX_WF_TASKS"} <= set(pub)
    # creating the consumer names its filter: judge cannot create a consumer on teacher's subject
    assert "$JS.API.CONSUMER.CREATE.MX_WF_TASKS.judge.mx.wf.task.judge" in pub
    assert {"mx.wf.task.student", "mx.wf.done", "mx.wf.failed", "mx.wf.dlq"} <= set(pub)
    assert "mx.wf.task.teacher" not in pub and "mx.wf.task.judge" not in pub
    assert not [s for s in pub if "teacher" in s or "student" in s.replace("mx.wf.task.student", "")]
    assert not [s for s in pub if s.endswith(">") and not s.startswith(("$JS.ACK.", "$KV.", "$JS.FC.",
                                                                         "$JS.API.DIRECT.GET.",
                                                                         "$JS.API.CONSUMER."))]
    assert comment == ("workflow wf, role judge: consumes mx.wf.task.judge; forwards to student "
                       "(cycle routing)")
    assert users_by_name(cycle)["wf.role.auditor"][1].endswith("forwards to no role (cycle routing)")


def test_only_llm_roles_get_the_fleet_bucket(cycle: WorkflowSpec) -> None:
    users = users_by_name(cycle)
    assert PERMISSIONS_FLEET_BUCKET == FLEET_BUCKET
    assert f"$KV.{FLEET_BUCKET}.>" in users["wf.role.teacher"][0]  # llm: default
    assert f"$JS.FC.KV_{FLEET_BUCKET}.>" in users["wf.role.teacher"][0]  # the watcher's flow control
    assert not [s for s in users["wf.role.judge"][0] if FLEET_BUCKET in s]


def test_roles_whose_llm_caches_get_the_response_cache_bucket(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, CYCLE.replace("roles:", "resources: {llm: {default: {cache: true}}}\n"
                                              "roles:", 1), name="wf")
    users = users_by_name(spec)
    assert "$KV.MX_WF_LLMCACHE.>" in users["wf.role.teacher"][0]  # get and create
    assert "$JS.API.STREAM.CREATE.KV_MX_WF_LLMCACHE" in users["wf.role.teacher"][0]
    assert not [s for s in users["wf.role.judge"][0] if "LLMCACHE" in s]  # llm: null
    assert not [s for s in users_by_name(make_spec(tmp_path, CYCLE, name="wf2"))[
        "wf2.role.teacher"][0] if "LLMCACHE" in s]  # cache off (the default)


def test_python_routing_allows_every_role_and_says_so(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, PYTHON, name="py")
    reach, analysed = next_roles(spec)
    assert not analysed and reach == {"a": ["a", "b"], "b": ["a", "b"]}
    users = users_by_name(spec)
    pub, comment = users["py.role.a"]
    assert {"mx.py.task.a", "mx.py.task.b"} <= set(pub)
    assert "python routing cannot be analysed: every role of the workflow is allowed" in comment
    # the router is not imported (it does not even exist): the source may enter at any role
    assert {"mx.py.task.a", "mx.py.task.b"} <= set(users["py.source"][0])
    assert "python routing: entry not analysed" in users["py.source"][1]


def test_source_and_sink(cycle: WorkflowSpec) -> None:
    users = users_by_name(cycle)
    source = set(users["wf.source"][0])
    assert "mx.wf.task.teacher" in source
    assert not {"mx.wf.task.judge", "mx.wf.task.student", "mx.wf.done"} & source
    assert {"$KV.MX_WF_SUBMITTED.>", "$JS.API.STREAM.CREATE.KV_MX_WF_SUBMITTED",
            "$JS.API.DIRECT.GET.KV_MX_WF_SUBMITTED.>", "$JS.API.STREAM.INFO.MX_WF_TASKS"} <= source
    sink = set(users["wf.sink"][0])
    assert {"$JS.API.CONSUMER.MSG.NEXT.MX_WF_RESULTS.*", "$JS.ACK.MX_WF_RESULTS.*.>", "mx.wf.dlq"} <= sink
    assert not [s for s in sink if s.startswith("mx.wf.task")]


def test_without_stream_management_only_admin_sets_up(cycle: WorkflowSpec) -> None:
    for name, (pub, _) in users_by_name(cycle, manage_streams=False).items():
        setup = [s for s in pub if ".STREAM.CREATE.MX_WF" in s or ".STREAM.UPDATE." in s
                 or ".CONSUMER.CREATE.MX_WF" in s]
        assert setup == [], name


def test_all_users_adds_admin_and_refuses_a_workflow_twice(tmp_path: Path, cycle: WorkflowSpec) -> None:
    other = make_spec(tmp_path, CYCLE, name="other")
    users = all_users([cycle, other])
    names = [u.name for u in users]
    assert names[-1] == ADMIN and len(names) == len(set(names)) == 2 * 6 + 1
    assert users[-1].publish == (">",)
    # nothing of one workflow names the other's subjects, streams or buckets
    for u in users:
        if u.name.startswith("wf."):
            assert not [s for s in u.publish if "OTHER" in s or "mx.other" in s], u.name
    with pytest.raises(ConfigError, match=r"^workflow 'wf' given twice$"):
        all_users([cycle, cycle])


def test_passwords_from_env_or_generated(cycle: WorkflowSpec) -> None:
    users = all_users([cycle])
    assert password_env("wf.role.judge") == "MX_NATS_PASSWORD_WF_ROLE_JUDGE"
    assert password_env("my-flow.sink") == "MX_NATS_PASSWORD_MY_FLOW_SINK"
    pw = passwords_for(users, {"MX_NATS_PASSWORD_ADMIN": "s3cret"}, generate=lambda: "gen")
    assert pw["admin"] == "s3cret" and pw["wf.role.judge"] == "gen"
    real = passwords_for(users, {})
    assert len(set(real.values())) == len(users) and all(len(p) >= 32 for p in real.values())


def test_nats_config_text(cycle: WorkflowSpec) -> None:
    users = all_users([cycle])
    pw = {u.name: f"pw-{i}" for i, u in enumerate(users)}
    text = nats_config(users, pw)
    assert text == nats_config(users, pw)  # deterministic: a re-run does not churn the file
    assert text.startswith("# matrix_p2p: NATS users") and "accounts {\n  MATRIX {\n" in text
    assert "    jetstream: enabled\n" in text
    assert '{ user: "wf.role.judge", password: "pw-1",' in text
    assert "      # workflow wf, role judge: consumes mx.wf.task.judge; forwards to student" in text
    assert text.count("{") == text.count("}") and text.count("[") == text.count("]")


def test_nats_config_refuses_missing_or_unsafe_passwords(cycle: WorkflowSpec) -> None:
    users = all_users([cycle])
    pw = {u.name: "ok" for u in users}
    with pytest.raises(ConfigError, match=r"^no password for NATS user\(s\): wf.sink, admin$"):
        nats_config(users, {**pw, "wf.sink": "", "admin": ""})
    with pytest.raises(ConfigError, match=(
            r"^MX_NATS_PASSWORD_ADMIN: the password of NATS user 'admin' must be printable ASCII "
            r"without quotes, backslashes or spaces$")):
        nats_config(users, {**pw, "admin": 'a"b'})


def nats_users(*argv: str) -> int:
    """The command without ``cli.main``: main would point the process's logging at
    pytest's captured stderr, which is closed after this test."""
    from matrix_p2p.cli import build_parser

    args = build_parser().parse_args(["nats-users", *argv])
    code: int = args.fn(args)
    return code


def test_nats_users_command_writes_0600_config_and_env_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MX_NATS_PASSWORD_CORAL_ROLE_JUDGE", "judge-secret-1")
    out, env_dir = tmp_path / "nats" / "users.conf", tmp_path / "env"
    assert nats_users("coral", "--out", str(out), "--env-dir", str(env_dir)) == 0
    assert "wrote 6 NATS users" in capsys.readouterr().err
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = out.read_text()
    assert '{ user: "coral.role.judge", password: "judge-secret-1",' in text
    assert "accounts {\n  MATRIX {" in text
    files = sorted(p.name for p in env_dir.iterdir())
    assert files == ["admin.env", "sink-coral.env", "source-coral.env", "worker-judge.env",
                     "worker-student.env", "worker-teacher.env"]
    assert all(stat.S_IMODE((env_dir / f).stat().st_mode) == 0o600 for f in files)
    assert (env_dir / "worker-judge.env").read_text() == (
        "MX_NATS_USER=coral.role.judge\nMX_NATS_PASSWORD=judge-secret-1\n")
    # a generated password is the same in the config and in the user's env file
    teacher = (env_dir / "worker-teacher.env").read_text().split("MX_NATS_PASSWORD=")[1].strip()
    assert f'{{ user: "coral.role.teacher", password: "{teacher}",' in text

    # two workflows with a role of the same name cannot share worker-<role>.env files
    with pytest.raises(ConfigError, match=r"two workflows have a role named like 'worker-teacher\.env'"):
        nats_users("coral", "dummy", "--out", str(out), "--env-dir", str(env_dir))
    assert nats_users("coral", "dummy", "--out", str(tmp_path / "two.conf"), "--account", "FLEET",
                      "--no-manage-streams") == 0
    two = (tmp_path / "two.conf").read_text()
    assert "  FLEET {" in two and "dummy.role.teacher" in two
    assert "STREAM.CREATE.MX_DUMMY_TASKS" not in two and "STREAM.CREATE.MX_CORAL_TASKS" not in two
