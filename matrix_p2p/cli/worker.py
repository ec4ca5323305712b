"""``worker``: one fleet member serving one or more roles (run it under systemd)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from typing import Any

import msgspec

from matrix_p2p.bus import Bus
from matrix_p2p.cli import common
from matrix_p2p.errors import ConfigError
from matrix_p2p.workflow.spec import WorkflowSpec


def add_parsers(sub: Any) -> None:
    w = common.add_command(
        sub, "worker", "serve one or more roles (one fleet member; run under systemd)",
        "Serve roles of a workflow: one durable pull consumer per role, shared by every\n"
        "worker of that role in the fleet. SIGTERM/Ctrl-C drains in-flight hops.\n"
        "At start it checks that its LLM endpoints and sandbox servers answer and serve\n"
        "the models its roles name: exit status 2 when none does (--no-preflight skips it).\n\n"
        "example: python -m matrix_p2p worker coral --role judge --nats nats://host:4222")
    w.add_argument("workflow", metavar="WORKFLOW", nargs="?",
                   help="workflow file or bundled name")
    # the old spelling, kept so that existing unit files keep working
    w.add_argument("--workflow", dest="workflow_flag", metavar="WORKFLOW", help=argparse.SUPPRESS)
    w.add_argument("--role", required=True, metavar="ROLE[,ROLE...]|all")
    common.add_llm_urls(w, "the workflow's")
    common.add_sandbox_urls(w, "the workflow's resources.sandbox urls")
    common.add_preflight(w)
    w.add_argument("--concurrency", type=int, metavar="N",
                   help="concurrent tasks per role in this process")
    w.add_argument("--drain-timeout", type=float, default=30.0, metavar="S",
                   help="on stop, wait this long for in-flight hops, then hand them back")
    common.add_fleet_state(w)
    common.add_no_cache(w)
    w.add_argument("--registry-wait", type=float, default=60.0, metavar="S",
                   help="with no --llm-url and no endpoints in the workflow, the replicas come "
                        "from the fleet's registry (llm-register): wait this long for one "
                        "(default 60)")
    common.add_stream_replicas(w)
    common.add_metrics(w)
    common.add_nats(w, required=True)
    common.add_common(w)
    w.set_defaults(fn=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from matrix_p2p.resources.llm import (
        open_fleet_state,
        open_llms,
        open_registry,
        registry_models,
        uses_llm,
    )
    from matrix_p2p.resources.preflight import preflight
    from matrix_p2p.resources.sandbox import open_sandboxes
    from matrix_p2p.runtime.serve import serve_roles
    from matrix_p2p.runtime.worker import WorkerStats
    from matrix_p2p.sdnotify import Liveness, supervise

    if args.workflow and args.workflow_flag:
        raise ConfigError("worker: give the workflow once (positional WORKFLOW)")
    args.workflow = args.workflow or args.workflow_flag
    if not args.workflow:
        raise ConfigError("worker: WORKFLOW is required (a workflow file or bundled name)")

    common.positive("--concurrency", args.concurrency)
    common.positive("--drain-timeout", args.drain_timeout, allow_zero=True)
    common.positive("--registry-wait", args.registry_wait, allow_zero=True)
    common.positive("--stream-replicas", args.stream_replicas)

    conn = common.conn_options(args, required=True, name="")
    nats_url = conn.safe_url() if conn else ""

    async def body(bus: Bus, spec: WorkflowSpec, stop: asyncio.Event) -> int:
        roles = common.roles_list(args.role, spec)
        models = registry_models(spec, roles, common.llm_urls(args))
        if not args.no_preflight:
            await preflight(spec, roles, llm_urls=common.llm_urls(args),
                            sandbox_urls=common.sandbox_urls(args), registry=models is not None)
        registry = (open_registry(bus, models, wait_s=args.registry_wait, where=str(spec.path))
                    if models is not None else contextlib.nullcontext(None))
        stats = WorkerStats()
        # systemd's watchdog: the fetch loops beat; a full worker beats as hops end (each
        # bounded by its hop_timeout_s)
        alive = Liveness(60.0 + max(spec.roles[r].hop_timeout_s for r in roles))
        async with common.metrics(args, f"worker-{args.role}") as metrics, \
                open_fleet_state(bus, enabled=uses_llm(spec, roles) and not args.no_fleet_state) as fleet, \
                registry as replicas, \
                open_llms(spec, roles, common.llm_urls(args), fleet=fleet,
                          recorder=metrics, cache_bus=None if args.no_cache else bus,
                          registry=replicas) as llms, \
                open_sandboxes(spec, common.sandbox_urls(args)) as resources:
            ready = asyncio.Event()
            served = asyncio.Event()

            async def announce() -> None:
                await ready.wait()
                common.log.info("worker.ready", workflow=spec.name, roles=roles, pid=os.getpid(),
                                nats=nats_url)

            async def serve() -> None:
                try:
                    await serve_roles(bus, spec, roles, llm_for=llms.by_role, stop=stop,
                                      concurrency=args.concurrency, stats=stats, ready=ready,
                                      drain_timeout=args.drain_timeout,
                                      replicas=args.stream_replicas, resources=resources,
                                      metrics=metrics, beat=alive.beat)
                finally:
                    served.set()

            async with asyncio.TaskGroup() as tg:
                tg.create_task(announce())
                tg.create_task(supervise(ready, stop, served, alive=alive,
                                         status=f"serving {','.join(roles)} of {spec.name}"))
                tg.create_task(serve())
        common.log.info("worker.stopped", **msgspec.structs.asdict(stats))
        return 0

    return common.with_bus(args, f"worker-{args.role}", "finishing in-flight hops", body,
                           check=lambda spec: common.roles_list(args.role, spec))
