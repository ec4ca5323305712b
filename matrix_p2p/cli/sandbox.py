"""``sandbox-server``: the sandbox service (a warm pool of bubblewrap sandboxes over HTTP)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from matrix_p2p.cli import common


def add_parsers(sub: Any) -> None:
    from matrix_p2p.sandbox.__main__ import add_arguments

    s = common.add_command(
        sub, "sandbox-server", "the sandbox service: leased bubblewrap sandboxes over HTTP",
        "Serve a warm pool of N bubblewrap sandboxes on 127.0.0.1:P (POST /acquire /execute\n"
        "/renew /release /release_all, GET /status /healthz /metrics). No root, no Docker.\n"
        "--isolation none runs commands UNCONFINED as this user (for hosts without user\n"
        "namespaces; never for untrusted code).\n\n"
        "example: python -m matrix_p2p sandbox-server --port 8700 --pool 8")
    add_arguments(s)
    common.add_common(s)
    s.set_defaults(fn=cmd_sandbox_server)


def cmd_sandbox_server(args: argparse.Namespace) -> int:
    from matrix_p2p.sandbox.__main__ import config_from
    from matrix_p2p.sandbox.server import serve

    common.positive("--port", args.port, allow_zero=True)
    config = config_from(args)
    if config.isolation == "none":
        print("matrix_p2p: WARNING: --isolation none: commands run UNCONFINED as this user",
              file=sys.stderr, flush=True)

    async def main() -> int:
        stop = asyncio.Event()
        common.install_signals(stop, "stopping the sandbox server")
        try:
            await serve(config, args.host, args.port, stop)
        except OSError as exc:
            from matrix_p2p.errors import ConfigError

            raise ConfigError(f"sandbox-server: cannot serve on {args.host}:{args.port}: {exc}") from None
        return 0

    return common.run_async(main)
