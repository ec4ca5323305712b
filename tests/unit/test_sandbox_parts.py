"""Pure parts of the sandbox service: bwrap argv, rlimits, request parsing, safe file writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from matrix_p2p.errors import ConfigError
from matrix_p2p.sandbox import isolation, protocol, workdir
from matrix_p2p.sandbox.errors import BadRequest
from matrix_p2p.sandbox.isolation import Limits


def test_bwrap_argv_shape() -> None:
    argv = isolation.bwrap_argv(
        "/b/bwrap", "/host/slot3", ["python3", "-c", "pass"], limits=Limits(tmp_bytes=4096),
        env={"PATH": "/usr/bin", "A": "1"}, cwd="sub", extra_ro=["/opt/py"],
        system=["--ro-bind", "/usr", "/usr"],
    )
    assert argv[:4] == ["/b/bwrap", "--unshare-all", "--die-with-parent", "--new-session"]
    joined = " ".join(argv)
    assert "--ro-bind /usr /usr" in joined and "--ro-bind /opt/py /opt/py" in joined
    assert "--bind /host/slot3 /work" in joined
    assert "--size 4096 --tmpfs /tmp" in joined
    assert "--remount-ro /" in joined
    assert "--chdir /work/sub" in joined
    assert "--clearenv --setenv PATH /usr/bin --setenv A 1" in joined
    assert argv[-4:] == ["--", "python3", "-c", "pass"]
    assert "--share-net" not in argv


def test_system_binds_keep_symlinks_as_symlinks(tmp_path: Path) -> None:
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "bin").symlink_to("usr/bin")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("x")
    (tmp_path / "etc" / "shadow").write_text("secret")
    args = isolation.system_binds(str(tmp_path))
    assert ["--ro-bind", str(tmp_path / "usr"), "/usr"] == args[0:3]
    assert ["--symlink", "usr/bin", "/bin"] == args[3:6]
    assert "/etc/passwd" in args and "/etc/shadow" not in args


def test_rlimit_prefix_with_prlimit_and_python_shim() -> None:
    limits = Limits(cpu_s=60, memory_bytes=1 << 30, nproc=32, fsize_bytes=1 << 20, nofile=64)
    pre = isolation.rlimit_prefix(limits, cpu_s=5, prlimit="/usr/bin/prlimit")
    assert pre == ["/usr/bin/prlimit", "--cpu=5:5", f"--as={1 << 30}:{1 << 30}", "--nproc=32:32",
                   f"--fsize={1 << 20}:{1 << 20}", "--nofile=64:64", "--core=0:0", "--"]
    shim = isolation.rlimit_prefix(limits, cpu_s=500, prlimit=None)
    assert shim[1:4] == ["-I", "-S", "-c"] and "RLIMIT_CPU,(60,60)" in shim[4]


def test_limits_validate() -> None:
    with pytest.raises(ConfigError, match="sandbox limits: nproc must be >= 1"):
        Limits(nproc=0).validate()


def test_cwd_mapping() -> None:
    assert isolation.inside_cwd(None) == "/work"
    assert isolation.inside_cwd("a/b") == "/work/a/b"
    assert isolation.inside_cwd("/tmp") == "/tmp"
    assert isolation.plain_cwd("/h/3", "/work/a") == "/h/3/a"
    assert isolation.plain_cwd("/h/3", None) == "/h/3"


def test_python_binds_skip_usr_and_private_dirs(tmp_path: Path) -> None:
    assert isolation.python_binds("/usr") == []
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o755)
    assert isolation.python_binds(str(private)) == []
    assert isolation.python_binds(str(private), needs_world_access=False) == [str(private)]


def test_sandbox_env_is_clean() -> None:
    os.environ["MX_SECRET_FOR_TEST"] = "1"
    try:
        env = isolation.sandbox_env({"X": "y"}, "/work", ["/opt/py/bin"])
    finally:
        del os.environ["MX_SECRET_FOR_TEST"]
    assert "MX_SECRET_FOR_TEST" not in env and env["X"] == "y"
    assert env["PATH"].startswith("/opt/py/bin:") and env["HOME"] == "/work"


# -- requests -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (b'{"timeout_s": "x"}', "timeout_s", "timeout_s: Expected `float | null`, got `str`"),
        (b'{"cmd": 3}', "cmd", "cmd: Expected `str | array | null`, got `int`"),
        (b"[1]", "body", "body: Expected `object`, got `array`"),
        (b"{", "body", "body: not valid JSON"),
    ],
)
def test_decode_errors_name_the_field(body: bytes, field: str, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        protocol.decode(body, protocol.ExecuteRequest)
    assert info.value.field == field and str(info.value).startswith(message)


def test_empty_body_is_empty_object() -> None:
    assert protocol.decode(b"", protocol.AcquireRequest).task_id == ""


def test_command_forms() -> None:
    E = protocol.ExecuteRequest
    assert protocol.argv_of(E(argv=["ls", "-l"])) == ["ls", "-l"]
    assert protocol.argv_of(E(cmd="echo hi")) == ["/bin/sh", "-c", "echo hi"]
    assert protocol.argv_of(E(cmd=["echo", "hi"])) == ["echo", "hi"]
    for req, field in ((E(), "argv"), (E(argv=[]), "argv"), (E(cmd=" "), "cmd"),
                       (E(argv=["a"], cmd="b"), "argv")):
        with pytest.raises(BadRequest) as info:
            protocol.argv_of(req)
        assert info.value.field == field


def test_lease_or_container_id() -> None:
    assert protocol.lease_of(protocol.LeaseRequest(container_id="c1")) == "c1"
    assert protocol.lease_of(protocol.LeaseRequest(lease="a", container_id="a")) == "a"
    with pytest.raises(BadRequest, match="lease: required"):
        protocol.lease_of(protocol.LeaseRequest())
    with pytest.raises(BadRequest, match="different leases"):
        protocol.lease_of(protocol.LeaseRequest(lease="a", container_id="b"))


def test_acquire_wait_from_wait_s_or_matrix_timeout() -> None:
    assert protocol.wait_of(protocol.AcquireRequest()) == 0.0
    assert protocol.wait_of(protocol.AcquireRequest(timeout=5)) == 5.0
    assert protocol.wait_of(protocol.AcquireRequest(wait_s=2, timeout=5)) == 2.0
    assert protocol.wait_of(protocol.AcquireRequest(timeout=1e9)) == protocol.MAX_WAIT_S
    with pytest.raises(BadRequest, match="wait_s: must be >= 0"):
        protocol.wait_of(protocol.AcquireRequest(wait_s=-1))


def test_execute_field_checks() -> None:
    E = protocol.ExecuteRequest
    with pytest.raises(BadRequest, match="forward_env: not supported"):
        protocol.check_execute(E(forward_env=["HOME"]))
    with pytest.raises(BadRequest, match="env: bad variable name 'A=B'"):
        protocol.check_execute(E(env={"A=B": "1"}))
    with pytest.raises(BadRequest, match=r"cwd: '/work/\.\./etc'"):
        protocol.check_execute(E(cwd="/work/../etc"))
    with pytest.raises(BadRequest, match="timeout_s: must be > 0, got 0"):
        protocol.positive(0, "timeout_s", 10)
    assert protocol.positive(50, "timeout_s", 10) == 10


def test_error_body_is_one_line_json() -> None:
    body = protocol.error_body(BadRequest("x", "x: bad\nvalue"), "x")
    assert b"\n" not in body
    assert body == b'{"error":"x: bad value","detail":"x: bad value","field":"x"}'


# -- files --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "", "a\x00b"])
def test_file_names_must_stay_inside(name: str) -> None:
    with pytest.raises(BadRequest) as info:
        workdir.check_files({name: "x"})
    assert info.value.field == "files"


def test_write_files_creates_dirs_and_accepts_work_prefix(tmp_path: Path) -> None:
    files = workdir.check_files({"a/b/c.txt": "hi", "/work/top.py": "print(1)", "./d.txt": "d"})
    workdir.write_files(str(tmp_path), files, workdir.Owner())
    assert (tmp_path / "a" / "b" / "c.txt").read_text() == "hi"
    assert (tmp_path / "top.py").read_text() == "print(1)"
    assert (tmp_path / "d.txt").read_text() == "d"
    workdir.write_files(str(tmp_path), workdir.check_files({"d.txt": "shorter"[:2]}), workdir.Owner())
    assert (tmp_path / "d.txt").read_text() == "sh"


def test_write_files_never_follows_links_planted_by_a_sandbox(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "victim"
    target.write_text("original")
    work = tmp_path / "work"
    work.mkdir()
    (work / "link").symlink_to(target)
    (work / "dirlink").symlink_to(outside)
    os.link(target, work / "hard")
    for name in ("link", "dirlink/victim", "hard"):
        with pytest.raises(BadRequest, match="files: "):
            workdir.write_files(str(work), workdir.check_files({name: "pwned"}), workdir.Owner())
    assert target.read_text() == "original"


def test_files_total_size_limit() -> None:
    with pytest.raises(BadRequest, match="the limit is"):
        workdir.check_files({"big": "x" * (workdir.MAX_FILE_BYTES + 1)})


def test_prepare_and_wipe_handle_read_only_dirs(tmp_path: Path) -> None:
    slot = tmp_path / "0"
    workdir.prepare(str(slot), workdir.Owner())
    (slot / "ro" / "deep").mkdir(parents=True)
    (slot / "ro" / "deep" / "f").write_text("x")
    os.chmod(slot / "ro" / "deep", 0o500)
    os.chmod(slot / "ro", 0o500)
    workdir.prepare(str(slot), workdir.Owner())
    assert list(slot.iterdir()) == []
    workdir.wipe(str(slot))
    assert not slot.exists()
