"""Command line: ``python -m matrix_p2p COMMAND``. Each command has ``--help``.

One module per command group (``run``, ``worker``, ``data``: submit/sink/status,
``ops``: dlq/replay, ``export``: rows as training data, ``report``: a look at the rows,
``servers``: nats-server/sim-llm,
``security``: nats-users) over ``common``.

User mistakes (bad files, flags, unreachable servers) end with one line on
stderr, ``matrix_p2p: error: ...``, and exit status 2 (configuration) or 1
(runtime); never a traceback. Ctrl-C drains cleanly; a second Ctrl-C aborts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from matrix_p2p import logs
from matrix_p2p.cli import data, export, ops, report, run, sandbox, security, servers, worker
from matrix_p2p.errors import ConfigError, MatrixError

EPILOG = """\
data path of one task:
  submit -> mx.<wf>.task.<entry role> -> worker(role) -> agent.handle -> hop decision
         -> mx.<wf>.task.<next role> ... -> mx.<wf>.done | .failed -> sink -> dataset
docs: README.md in the project; every command takes --help.
"""

COMMAND_GROUPS = (run, worker, data, ops, export, report, servers, sandbox, security)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m matrix_p2p",
        description="Peer-to-peer multi-agent synthetic data generation over NATS JetStream.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.add_parsers(sub)
    return p


def first_matrix_error(group: BaseExceptionGroup[BaseException]) -> MatrixError | None:
    """A ``MatrixError`` raised inside a TaskGroup arrives wrapped: find it."""
    for exc in group.exceptions:
        if isinstance(exc, MatrixError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = first_matrix_error(exc)
            if found is not None:
                return found
    return None


def _fail(exc: MatrixError) -> int:
    print(f"matrix_p2p: error: {exc}", file=sys.stderr)
    return 2 if isinstance(exc, ConfigError) else 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        logs.setup(args.log_level, json_logs=args.log_json)
        code: int = args.fn(args)
        return code
    except MatrixError as exc:
        return _fail(exc)
    except BaseExceptionGroup as group:
        found = first_matrix_error(group)
        if found is None:
            raise
        return _fail(found)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("matrix_p2p: aborted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
