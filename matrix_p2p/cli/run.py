"""``run``: a workflow end to end on one machine."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from matrix_p2p.cli import common


def add_parsers(sub: Any) -> None:
    r = common.add_command(
        sub, "run", "run a workflow end to end on one machine (embedded broker and simulator)",
        "Run WORKFLOW on this machine: a real nats-server on a free 127.0.0.1 port with a\n"
        "store directory, a vLLM-compatible simulator unless --llm-url is given, workers\n"
        "for every role, the source and the sink. Ctrl-C drains; re-running resumes.\n\n"
        "At start it checks that every LLM endpoint and sandbox server answers and serves\n"
        "the models the workflow names (--no-preflight skips it); it stops early when the\n"
        "first tasks mostly fail the same way (limits.abort_on_failures).\n\n"
        "exit status: 0 when every task in the output is done; 1 when any failed (see\n"
        "--retry-failed, --accept-failures) or the run stopped as broken; 2 for a usage or\n"
        "configuration error (an endpoint down, a model not served); 130 when interrupted.\n\n"
        "example: python -m matrix_p2p run coral --limit 200 --out out/coral.jsonl")
    common.add_workflow(r, "workflow file or bundled name (coral)")
    r.add_argument("--limit", type=int, metavar="N", help="only the first N input rows")
    common.add_source(r)
    r.add_argument("--out", metavar="PATH",
                   help="dataset file, .jsonl, .jsonl.zst or .parquet; one writer at a time "
                        "(default: the workflow's sink.path)")
    r.add_argument("--kept-only", action="store_true",
                   help="write only rows the workflow's filters kept (done, result.kept true)")
    r.add_argument("--store", metavar="DIR",
                   help="embedded broker's store directory (default .mx/<workflow>; keep it "
                        "to resume)")
    r.add_argument("--sync-interval", action="store_true",
                   help="embedded broker: fsync periodically instead of on every write (faster;"
                        " an OS crash can lose acknowledged writes)")
    common.add_llm_urls(r, "start the simulator")
    common.add_sandbox_urls(r, "start a sandbox server when the workflow declares sandboxes")
    common.add_preflight(r)
    r.add_argument("--sim-replicas", type=int, default=1, metavar="K",
                   help="simulator replicas when no --llm-url (default 1)")
    r.add_argument("--concurrency", type=int, metavar="N",
                   help="slots per role (default: the workflow's roles.<r>.concurrency)")
    r.add_argument("--no-progress", action="store_true", help="no progress display")
    r.add_argument("--retry-failed", action="store_true",
                   help="resubmit tasks whose latest attempt failed, as a new attempt (id "
                        "<id>~a<n>); the output keeps the latest attempt of each task")
    r.add_argument("--accept-failures", action="store_true",
                   help="exit 0 even when some tasks failed")
    common.add_version_mode(r)
    common.add_fleet_state(r)
    common.add_no_cache(r)
    common.add_metrics(r)
    common.add_nats(r, required=False)
    common.add_common(r)
    r.set_defaults(fn=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from matrix_p2p.runset.broken import stopped_message
    from matrix_p2p.runtime import summary
    from matrix_p2p.runtime.local_run import RunOptions, run_workflow
    from matrix_p2p.runtime.rows import with_source
    from matrix_p2p.workflow.loader import load

    common.positive("--limit", args.limit, allow_zero=True)
    common.positive("--concurrency", args.concurrency)
    common.positive("--sim-replicas", args.sim_replicas)
    common.positive("--metrics-port", args.metrics_port, allow_zero=True)
    spec = with_source(load(args.workflow), args.source)
    opts = RunOptions(
        limit=args.limit, out=args.out,
        nats=common.conn_options(args, required=False, name="mx-run"),
        store=args.store, sync="interval" if args.sync_interval else "always",
        llm_urls=common.llm_urls(args), sandbox_urls=common.sandbox_urls(args),
        sim_replicas=args.sim_replicas,
        concurrency=args.concurrency, progress=not args.no_progress,
        fleet_state=not args.no_fleet_state, retry_failed=args.retry_failed,
        version_mode=args.version_mode, kept_only=args.kept_only,
        metrics_port=args.metrics_port, metrics_host=args.metrics_host,
        preflight=not args.no_preflight, cache=not args.no_cache,
    )

    async def main() -> int:
        stop = asyncio.Event()
        common.install_signals(stop, "draining in-flight tasks; re-run the same command to resume")
        result = await run_workflow(spec, opts, stop)
        s = summary.summarize(result, spec)
        path = summary.write_json(s)
        head, *table = summary.render(s).splitlines()
        kept = ([f"  the earlier code version's rows: {result.preserved}"]
                if result.preserved else [])
        print("\n".join([head, f"  summary: {path}", *kept, *table]), file=sys.stderr)
        if result.aborted is not None:  # a broken run: never 0, even with --accept-failures
            print(f"matrix_p2p: error: {stopped_message(result.aborted)}", file=sys.stderr)
            return 1
        if result.interrupted:
            return 130
        if result.dataset_failed and not args.accept_failures:
            print(f"matrix_p2p: {result.dataset_failed} task(s) failed: re-run with "
                  "--retry-failed, or --accept-failures to exit 0", file=sys.stderr)
            return 1
        return 0

    return common.run_async(main)
