"""The retail environment as a command: one tool call against a database file.

This is what runs inside a task's sandbox. It needs only the standard library
(no msgspec, no virtual environment), so a bare ``python3`` runs it, either as
a module or by path::

    python -m matrix_p2p_agents.tau.env init --db db.json [--source PATH]
    python -m matrix_p2p_agents.tau.env call --db db.json TOOL 'JSON_ARGS'
    python -m matrix_p2p_agents.tau.env hash --db db.json
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

Callers build the argv with ``command()`` and read the result with
``parse_result()`` (both stdlib, usable on either side of the sandbox).

Exit status: 0 when a JSON result was printed, tool errors included; 1 when
the database file is missing or unreadable (``ok`` false, ``output`` says
why); 2 for a command-line usage error (argparse's message on stderr).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, NamedTuple

if __package__:
    from .retail_db import bundled_db_path, db_hash, load_db, save_db
    from .retail_tools import TOOLS, call_tool, openai_schemas
else:  # run by path: import the siblings flat (put the directory first: ``python -I`` omits it)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from retail_db import bundled_db_path, db_hash, load_db, save_db  # type: ignore[no-redef]
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
    return EnvResult(bool(data.get("ok")), data["output"], data.get("db_hash"))


def _print(ok: bool, output: str, digest: str | None) -> None:
    print(json.dumps({"ok": ok, "output": output, "db_hash": digest}, ensure_ascii=False))


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
    sub.add_parser("schemas", help="print the tools' OpenAI schemas")
    args = parser.parse_args(argv)

    if args.command == "schemas":
        print(json.dumps(openai_schemas(), ensure_ascii=False))
        return 0
    path = Path(args.db)
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
    output = call_tool(db, args.tool, arguments)
    ok = not output.startswith("Error:")
    spec = TOOLS.get(args.tool)
    if ok and spec is not None and spec.writes:
        save_db(db, path)  # a failed call changed nothing: no write
    _print(ok, output, db_hash(db))
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
