"""The retail environment as a command: one tool call against a database file.

This is what runs inside a task's sandbox. It needs only the standard library
(no msgspec, no virtual environment), so a bare ``python3`` runs it, either as
a module or by path::

    python -m matrix_p2p_agents.tau.env init --db db.json [--source PATH]
    python -m matrix_p2p_agents.tau.env call --db db.json TOOL 'JSON_ARGS'
    python -m matrix_p2p_agents.tau.env hash --db db.json
    python -m matrix_p2p_agents.tau.env serve --db db.json
    python -m matrix_p2p_agents.tau.env schemas
    python3 /path/to/agents/tau/env.py call --db db.json get_order_details '{"order_id": "#W0000001"}'

``--db`` is relative to the current (work) directory. Every command prints one
JSON object on stdout: ``{"ok": bool, "output": str, "db_hash": str | null}``
(``schemas`` prints the list of tool schemas instead).

- ``init`` copies the bundled database (or ``--source``) to ``--db``; ``output``
  is ``"initialized"``.
- ``call`` runs the tool, saves the database if the tool may write, and prints
  the tool's result as ``output``; ``ok`` is false when it starts with
  ``Error:``. Malformed JSON arguments are a tool error too (the model wrote
  them), not a crash.
- ``hash`` prints the database's hash as both ``output`` and ``db_hash``.
- ``serve`` is the environment as a sandbox *session*: it loads ``--db`` once
  (copying the bundled database there first when the file does not exist),
  then answers one JSON line on stdin with one JSON line on stdout, the same
  object as above, until stdin closes. Requests: ``{"op": "call", "tool":
  NAME, "arguments": {...}}`` (``db_hash`` null: hashing costs milliseconds),
  ``{"op": "hash"}``, ``{"op": "ping"}`` (``output`` ``"ready"``). A call
  runs exactly as ``call`` does (``apply_call``, shared): a write is saved
  to ``--db`` before the reply, so a session started again after its
  process died continues from the last write, as the next ``call`` would;
  and the database is then re-read from the bytes saved, so every later
  result is byte for byte what a fresh ``call`` process would print.

Callers build the argv with ``command()`` and read the result with
``parse_result()`` (both stdlib, usable on either side of the sandbox).

Exit status: 0 when a JSON result was printed, tool errors included; 1 when
the database file is missing or unreadable (``ok`` false, ``output`` says
why; ``serve`` says it on stderr); 2 for a command-line usage error
(argparse's message on stderr).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, NamedTuple

if __package__:
    from .retail_db import RetailDB, bundled_db_path, db_hash, load_db, save_db
    from .retail_tools import TOOLS, call_tool, openai_schemas
else:  # run by path: import the siblings flat (put the directory first: ``python -I`` omits it)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from retail_db import RetailDB, bundled_db_path, db_hash, load_db, save_db  # type: ignore[no-redef]
    from retail_tools import TOOLS, call_tool, openai_schemas  # type: ignore[no-redef]


ENV_PATH = Path(__file__).resolve()
DB_FILE = "db.json"


class EnvResult(NamedTuple):
    ok: bool
    output: str
    db_hash: str | None


def command(verb: str, *args: str, python: str = "python3", db: str = DB_FILE) -> list[str]:
    """The argv that runs ``verb`` (init, call, hash) by path, for a sandbox's ``execute``.

    ``command("call", "get_order_details", json.dumps({"order_id": "#W0000001"}))``
    """
    return [python, str(ENV_PATH), verb, "--db", db, *args]


def parse_result(stdout: str) -> EnvResult:
    """The printed JSON result; ``ValueError`` when the output is not one (a crash, a kill)."""
    try:
        data = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else None
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("output"), str):
        raise ValueError(f"not an environment result: {stdout[:200]!r}")
    return reply_result(data)


def reply_result(reply: Any) -> EnvResult:
    """A result already decoded (a ``serve`` reply); ``ValueError`` when it is not one."""
    if not isinstance(reply, dict) or not isinstance(reply.get("output"), str):
        raise ValueError(f"not an environment result: {str(reply)[:200]!r}")
    return EnvResult(bool(reply.get("ok")), reply["output"], reply.get("db_hash"))


def _result(ok: bool, output: str, digest: str | None) -> dict[str, Any]:
    return {"ok": ok, "output": output, "db_hash": digest}


def _print(ok: bool, output: str, digest: str | None) -> None:
    print(json.dumps(_result(ok, output, digest), ensure_ascii=False))


def apply_call(db: RetailDB, path: Path, tool: str, arguments: Any) -> tuple[bool, str, RetailDB]:
    """Run one tool call on ``db``: (ok, the tool's result, the database from now on).

    A successful call of a tool that may write is saved to ``path`` (a failed
    call changed nothing: no write), and the database is re-read from the bytes
    saved: the file's keys are sorted, tools print JSON in dict order, so this
    is what the next process loading the file would answer from.
    """
    output = call_tool(db, tool, arguments)
    ok = not output.startswith("Error:")
    spec = TOOLS.get(tool)
    if ok and spec is not None and spec.writes:
        db = json.loads(save_db(db, path))
    return ok, output, db


def answer(db: RetailDB, path: Path, line: bytes) -> tuple[dict[str, Any], RetailDB]:
    """One ``serve`` request line: (the reply object, the database from now on)."""
    try:
        request = json.loads(line)
    except ValueError as exc:
        return _result(False, f"Error: bad request: {exc}", None), db
    op = request.get("op") if isinstance(request, dict) else None
    if op == "call":
        tool, arguments = request.get("tool"), request.get("arguments", {})
        if not isinstance(tool, str):
            return _result(False, f"Error: unknown tool {tool!r}", None), db
        try:
            ok, output, db = apply_call(db, path, tool, arguments)
        except Exception as exc:  # a tool's bug: the database may be half changed
            # Start over from what was last saved, as the next ``call`` process would.
            return _result(False, f"Error: the environment failed: {type(exc).__name__}: {exc}",
                           None), load_db(path)
        return _result(ok, output, None), db
    if op == "hash":
        value = db_hash(db)
        return _result(True, value, value), db
    if op == "ping":
        return _result(True, "ready", None), db
    return _result(False, f"Error: bad request: unknown op {op!r}", None), db


def serve(path: Path) -> int:
    """Answer request lines on stdin until it closes (see the module doc)."""
    try:
        if not path.exists():
            shutil.copyfile(bundled_db_path(), path)
        db = load_db(path)
    except (OSError, ValueError) as exc:
        print(f"Error: cannot read database {str(path)!r}: {exc}", file=sys.stderr)
        return 1
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        reply, db = answer(db, path, line)
        out.write(json.dumps(reply, ensure_ascii=False).encode() + b"\n")
        out.flush()
    return 0


def run(argv: list[str]) -> int:
    """Run one command (see the module doc); returns the exit status."""
    parser = argparse.ArgumentParser(prog="matrix_p2p_agents.tau.env",
                                     description="The retail tool environment.")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="write a fresh database to --db")
    init.add_argument("--db", default="db.json")
    init.add_argument("--source", default=None, help="database to copy (default: the bundled one)")
    call = sub.add_parser("call", help="run one tool on the database in --db")
    call.add_argument("--db", default="db.json")
    call.add_argument("tool")
    call.add_argument("arguments", nargs="?", default="{}", help="the tool's arguments as a JSON object")
    digest = sub.add_parser("hash", help="print the hash of the database in --db")
    digest.add_argument("--db", default="db.json")
    session = sub.add_parser("serve", help="answer JSON-line requests on stdin (a sandbox session)")
    session.add_argument("--db", default="db.json")
    sub.add_parser("schemas", help="print the tools' OpenAI schemas")
    args = parser.parse_args(argv)

    if args.command == "schemas":
        print(json.dumps(openai_schemas(), ensure_ascii=False))
        return 0
    path = Path(args.db)
    if args.command == "serve":
        return serve(path)
    try:
        if args.command == "init":
            shutil.copyfile(args.source or bundled_db_path(), path)
        db = load_db(path)
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError, a corrupt file
        _print(False, f"Error: cannot read database {str(path)!r}: {exc}", None)
        return 1
    if args.command == "init":
        _print(True, "initialized", db_hash(db))
        return 0
    if args.command == "hash":
        value = db_hash(db)
        _print(True, value, value)
        return 0

    try:
        arguments: Any = json.loads(args.arguments)
    except ValueError as exc:
        _print(False, f"Error: arguments are not valid JSON: {exc}", db_hash(db))
        return 0
    ok, output, db = apply_call(db, path, args.tool, arguments)
    _print(ok, output, db_hash(db))
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
