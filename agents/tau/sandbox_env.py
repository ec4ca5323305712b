"""The retail environment inside a task's sandbox: the files copied in and the argv run.

Decision: the environment's code and its database are *copied* into the
sandbox's work directory (``files`` on the first execution of a lease, about
180 KB), rather than run by path from the host. The sandbox only sees the
host's system directories read-only, not a virtual environment or a clone, so
copying works wherever the sandbox server runs (another host included); the
work dir survives between the task's calls, so the copy happens once per lease.
The modules copied use only the standard library (``env.py`` documents this).
"""

from __future__ import annotations

import functools
from pathlib import Path

from .env import parse_result

__all__ = ["DB_FILE", "ENV_DIR", "argv", "files", "parse_result"]

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
