"""What every command shares: flags, the NATS connection, signals, the event loop.

No command module imports another's privates; they all use these.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

from matrix_p2p import logs
from matrix_p2p.bus import Bus, ConnectOptions, connect
from matrix_p2p.errors import ConfigError
from matrix_p2p.metrics import Recorder
from matrix_p2p.workflow.loader import load
from matrix_p2p.workflow.spec import WorkflowSpec

log = structlog.get_logger("matrix_p2p")

Formatter = argparse.RawDescriptionHelpFormatter


# ---------------------------------------------------------------- flags
def add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("logging")
    g.add_argument("--log-level", default=None, choices=logs.LEVELS,
                   help="log level (default: info, or MX_LOG_LEVEL)")
    g.add_argument("--log-json", action="store_true", default=None,
                   help="JSON log lines even on a terminal (default when not a terminal)")


def add_workflow(p: argparse.ArgumentParser, help_: str = "workflow file or bundled name") -> None:
    p.add_argument("workflow", metavar="WORKFLOW", help=help_)


def add_nats(p: argparse.ArgumentParser, *, required: bool) -> None:
    g = p.add_argument_group("NATS connection (flags override MX_NATS_* environment variables)")
    g.add_argument("--nats", metavar="URL", default=None, required=False,
                   help="NATS URL(s), comma-separated" + (" (required, or MX_NATS_URL)"
                                                          if required else
                                                          " (default: start an embedded broker)"))
    g.add_argument("--nats-user", metavar="USER", help="user name (MX_NATS_USER)")
    g.add_argument("--nats-password-env", metavar="VAR", default=None,
                   help="name of the env var holding the password (default MX_NATS_PASSWORD);"
                        " passwords are never taken as flags, so they stay out of `ps`")
    g.add_argument("--nats-token-env", metavar="VAR", default=None,
                   help="name of the env var holding a token (default MX_NATS_TOKEN)")
    g.add_argument("--nats-creds", metavar="FILE", help=".creds file (MX_NATS_CREDS)")
    g.add_argument("--nats-nkey", metavar="FILE", help="NKey seed file (MX_NATS_NKEY)")
    g.add_argument("--tls-ca", metavar="FILE", help="CA certificate (MX_NATS_TLS_CA)")
    g.add_argument("--tls-cert", metavar="FILE", help="client certificate (MX_NATS_TLS_CERT)")
    g.add_argument("--tls-key", metavar="FILE", help="client key (MX_NATS_TLS_KEY)")


def add_fleet_state(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-fleet-state", action="store_true",
                   help="do not share learned LLM endpoint limits with other workers "
                        "(JetStream key-value bucket MX_LLM_FLEET)")


def add_no_cache(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-cache", action="store_true",
                   help="ask the LLM servers even where the workflow turns the response "
                        "cache on (resources.llm.<name>.cache)")


def add_stream_replicas(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stream-replicas", "--replicas", type=int, default=None, metavar="R",
                   dest="stream_replicas",
                   help="JetStream stream replicas on a cluster, e.g. 3 (default: keep the "
                        "existing streams' setting; new streams get 1; --replicas is the "
                        "old spelling)")


def add_metrics(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Prometheus metrics")
    g.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve /metrics on this port (0: a free one, logged as metrics.serving); "
                        "default: no metrics")
    g.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                   help="address to serve /metrics on (default 127.0.0.1; 0.0.0.0 for a scraper "
                        "on another host)")


def metrics(args: argparse.Namespace, what: str) -> contextlib.AbstractAsyncContextManager[Recorder]:
    """The process's metrics for ``--metrics-port`` / ``--metrics-host`` (``NullMetrics`` without)."""
    from matrix_p2p.metrics import serving

    positive("--metrics-port", args.metrics_port, allow_zero=True)
    return serving(args.metrics_port, args.metrics_host, what=what)


def add_llm_urls(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--llm-url", action="append", metavar="URL",
                   help=f"OpenAI-compatible endpoint, repeatable or comma-separated (default: {default})")


def add_preflight(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-preflight", action="store_true",
                   help="do not check at start that the LLM endpoints and sandbox servers "
                        "answer and serve the workflow's models (by default a dead endpoint "
                        "or a wrong model name is one error line and exit status 2)")


def add_version_mode(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--new-version", action="store_const", const="new", dest="version_mode",
                   default="check", help="the workflow or its agents changed: start fresh rows "
                                         "under the new code version")
    g.add_argument("--reuse", action="store_const", const="reuse", dest="version_mode",
                   help="the workflow or its agents changed: keep the results already stored")


def llm_urls(args: argparse.Namespace) -> list[str]:
    return [u.strip() for v in args.llm_url or () for u in v.split(",") if u.strip()]


def add_sandbox_urls(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--sandbox-url", action="append", metavar="URL",
                   help=f"sandbox server, repeatable or comma-separated (default: {default})")


def sandbox_urls(args: argparse.Namespace) -> list[str]:
    return [u.strip() for v in args.sandbox_url or () for u in v.split(",") if u.strip()]


def positive(name: str, value: float | None, *, allow_zero: bool = False,
             most: float | None = None) -> None:
    """A numeric flag that must be positive (and at most ``most``): a one-line
    ``ConfigError`` otherwise."""
    if value is None:
        return
    if value != value or value < 0 or (value == 0 and not allow_zero):  # NaN too
        raise ConfigError(f"{name}: must be {'at least 0' if allow_zero else 'positive'}, got {value}")
    if most is not None and value > most:
        raise ConfigError(f"{name}: must be at most {most}, got {value}")


# ---------------------------------------------------------------- connection and loop
def conn_options(args: argparse.Namespace, *, required: bool, name: str) -> ConnectOptions | None:
    url = args.nats or os.environ.get("MX_NATS_URL")
    if url is None:
        if required:
            raise ConfigError("--nats: a NATS URL is required (or set MX_NATS_URL)")
        return None
    password = os.environ.get(args.nats_password_env) if args.nats_password_env else None
    token = os.environ.get(args.nats_token_env) if args.nats_token_env else None
    return ConnectOptions.from_env(
        url=url, user=args.nats_user, password=password, token=token, creds=args.nats_creds,
        nkey=args.nats_nkey, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
        name=name,
    )


def install_signals(stop: asyncio.Event, what: str) -> None:
    """First SIGINT/SIGTERM sets ``stop`` (drain); a second one cancels the main task."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def on_signal(signame: str) -> None:
        if stop.is_set():
            log.warning("abort", signal=signame)
            if main is not None:
                main.cancel()
            return
        log.warning("stopping", signal=signame, detail=f"{what}; press Ctrl-C again to abort")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)


def run_async(coro_fn: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run the command's coroutine, under uvloop unless MX_NO_UVLOOP is set."""
    if os.environ.get("MX_NO_UVLOOP", "") in ("", "0"):
        try:
            import uvloop

            return uvloop.run(coro_fn())
        except ImportError:
            pass
    return asyncio.run(coro_fn())


def with_bus(args: argparse.Namespace, name: str, what: str,
             body: Callable[[Bus, WorkflowSpec, asyncio.Event], Awaitable[int]],
             check: Callable[[WorkflowSpec], object] | None = None) -> int:
    """Load the workflow, ``check`` it (flags against the spec, before connecting),
    connect, run ``body(bus, spec, stop)``, close. The shape of every command that
    talks to a fleet's broker; errors stay one line."""
    spec = load(args.workflow)
    if check is not None:
        check(spec)
    conn = conn_options(args, required=True, name=f"mx-{name}-{spec.name}")
    assert conn is not None

    async def main() -> int:
        stop = asyncio.Event()
        install_signals(stop, what)
        bus = await connect(conn)
        try:
            return await body(bus, spec, stop)
        finally:
            await bus.close()

    return run_async(main)


def add_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", metavar="PATH|GLOB|hf:NAME",
                   help="read this input instead of the workflow's source: .jsonl, .jsonl.zst, "
                        ".parquet, .csv or .tsv files (a glob), or hf:NAME[:SPLIT] (a Hugging "
                        "Face dataset)")


def add_command(sub: Any, name: str, help_: str, desc: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_, description=desc,
                                                formatter_class=Formatter)
    return p


def roles_list(value: str, spec: WorkflowSpec) -> list[str]:
    """``all`` or a comma-separated list of the workflow's roles."""
    if value.strip() == "all":
        return list(spec.roles)
    roles = [r.strip() for r in value.split(",") if r.strip()]
    unknown = [r for r in roles if r not in spec.roles]
    if unknown or not roles:
        raise ConfigError(
            f"--role: unknown role(s) {', '.join(unknown) or '(none)'} in workflow {spec.name!r} "
            f"(roles: {', '.join(spec.roles)}, or 'all')"
        )
    return roles
