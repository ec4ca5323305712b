"""The retail environment inside a task's sandbox: the files copied in, the argv run, the requests.

Decision: the environment's code and its database are *copied* into the
sandbox's work directory (``files`` on the first execution of a lease, about
180 KB), rather than run by path from the host. The sandbox only sees the
host's system directories read-only, not a virtual environment or a clone, so
copying works wherever the sandbox server runs (another host included); the
work dir survives between the task's calls, so the copy happens once per lease.
The modules copied use only the standard library (``env.py`` documents this).

Decision: the environment runs as the lease's *session* (``env.py serve``):
one process per trajectory keeps the database in memory and answers each
tool call over a pipe, instead of a process per call that loads and rewrites
the file (about 1 ms a call against about 30). It still saves every write to
``db.json``, so a session started again after its process died continues
from the last write (see ``roles.py``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from .env import parse_result, reply_result

__all__ = ["DB_FILE", "ENV_DIR", "HASH", "PING", "argv", "call", "files", "parse_result",
           "reply_result", "session_argv"]

ENV_DIR = "tau_env"
DB_FILE = "db.json"
_MODULES = ("env.py", "retail_db.py", "retail_tools.py", "retail_calc.py", "tool_registry.py")
_HERE = Path(__file__).resolve().parent


@functools.cache
def files() -> dict[str, str]:
    """Work-dir relative path -> text: the environment and its bundled database."""
    out = {f"{ENV_DIR}/{name}": (_HERE / name).read_text(encoding="utf-8") for name in _MODULES}
    out[f"{ENV_DIR}/data/db.json"] = (_HERE / "data" / "db.json").read_text(encoding="utf-8")
    return out


def argv(verb: str, *args: str) -> list[str]:
    """The command for ``verb`` (init, call, hash), run from the work dir with a bare python3
    (``-I -S``: no user site, no environment variables, no site-packages)."""
    return ["python3", "-I", "-S", f"{ENV_DIR}/env.py", verb, "--db", DB_FILE, *args]


def session_argv() -> list[str]:
    """The session program: ``env.py serve`` on ``db.json`` (created from the bundled copy)."""
    return argv("serve")


def call(name: str, arguments: Any) -> dict[str, Any]:
    """The session request that runs tool ``name``."""
    return {"op": "call", "tool": name, "arguments": arguments}


HASH = {"op": "hash"}  # the database's hash: what the reward compares
PING = {"op": "ping"}  # answers once the database is loaded
