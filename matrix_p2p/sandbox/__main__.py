"""``python -m matrix_p2p.sandbox --port P --pool N``: run a sandbox server until SIGINT/SIGTERM.

``main(argv)`` is what ``python -m matrix_p2p sandbox-server`` calls;
``add_arguments`` and ``config_from`` let the main CLI reuse the flags.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from matrix_p2p import logs
from matrix_p2p.errors import ConfigError
from matrix_p2p.sandbox.isolation import Limits
from matrix_p2p.sandbox.service import SandboxConfig

_MB = 1 << 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8700, help="port (0 = a free one; default 8700)")
    p.add_argument("--pool", type=int, default=4, help="sandboxes in the warm pool (default 4)")
    p.add_argument("--isolation", choices=("bwrap", "none"), default="bwrap",
                   help="bwrap (default), or none: NO isolation, commands run as the server's user")
    p.add_argument("--ttl", type=float, default=300.0, help="lease TTL in seconds (default 300)")
    p.add_argument("--max-ttl", type=float, default=3600.0, help="longest TTL a client may ask for")
    p.add_argument("--timeout", type=float, default=30.0, help="default execution timeout, s (default 30)")
    p.add_argument("--max-timeout", type=float, default=600.0, help="longest execution timeout, s")
    p.add_argument("--cpu-s", type=int, default=60, help="RLIMIT_CPU per process, s (default 60)")
    p.add_argument("--memory-mb", type=int, default=1024, help="RLIMIT_AS per process, MiB (default 1024)")
    p.add_argument("--nproc", type=int, default=128, help="RLIMIT_NPROC per sandbox uid (default 128)")
    p.add_argument("--fsize-mb", type=int, default=64, help="largest file a sandbox may write, MiB")
    p.add_argument("--tmp-mb", type=int, default=64, help="size of each execution's /tmp, MiB")
    p.add_argument("--output-kb", type=int, default=1024,
                   help="stdout and stderr kept per execution, KiB each (default 1024)")
    p.add_argument("--work-root", default=None, help="parent dir of the work dirs (default: temp dir)")
    p.add_argument("--uid-base", type=int, default=1_500_000,
                   help="as root: slot i runs as host uid/gid uid-base+i (default 1500000)")


def config_from(args: argparse.Namespace) -> SandboxConfig:
    limits = Limits(cpu_s=args.cpu_s, memory_bytes=args.memory_mb * _MB, nproc=args.nproc,
                    fsize_bytes=args.fsize_mb * _MB, tmp_bytes=args.tmp_mb * _MB,
                    output_bytes=args.output_kb * 1024)
    return SandboxConfig(
        pool_size=args.pool, isolation=args.isolation, limits=limits, ttl_s=args.ttl,
        max_ttl_s=args.max_ttl, default_timeout_s=args.timeout, max_timeout_s=args.max_timeout,
        work_root=args.work_root, uid_base=args.uid_base,
    ).validate()


async def _serve(config: SandboxConfig, host: str, port: int) -> None:
    from matrix_p2p.sandbox.server import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await serve(config, host, port, stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server; 2 with one line on stderr for a start-up problem (no namespaces, bad flag)."""
    parser = argparse.ArgumentParser(prog="sandbox-server", description="bubblewrap sandbox pool over HTTP")
    add_arguments(parser)
    parser.add_argument("--log-level", default=None)
    args = parser.parse_args(argv)
    try:
        logs.setup(args.log_level)
        config = config_from(args)
        if config.isolation == "none":
            print("sandbox-server: WARNING: --isolation none: commands run UNCONFINED as this user",
                  file=sys.stderr, flush=True)
        asyncio.run(_serve(config, args.host, args.port))
    except ConfigError as exc:
        print(f"sandbox-server: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sandbox-server: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
