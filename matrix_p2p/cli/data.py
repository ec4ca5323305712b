"""``submit``, ``sink`` and ``status``: tasks in, dataset out, and what is in between."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import msgspec

from matrix_p2p.bus import Bus
from matrix_p2p.cli import common
from matrix_p2p.workflow.spec import WorkflowSpec


def add_parsers(sub: Any) -> None:
    s = common.add_command(
        sub, "submit", "create tasks from the workflow's source (idempotent)",
        "Create one task per input row and trial. Ids derive from source, row and trial, so\n"
        "submitting again creates nothing new. Admission control keeps at most\n"
        "limits.max_inflight tasks live in the stream.")
    common.add_workflow(s)
    s.add_argument("--limit", type=int, metavar="N", help="only the first N input rows")
    s.add_argument("--retry-failed", action="store_true",
                   help="also resubmit tasks whose latest attempt failed, as a new attempt")
    common.add_version_mode(s)
    common.add_source(s)
    common.add_stream_replicas(s)
    common.add_metrics(s)
    common.add_nats(s, required=True)
    common.add_common(s)
    s.set_defaults(fn=cmd_submit)

    k = common.add_command(
        sub, "sink", "write finished tasks to a dataset file (each task once; resumable)",
        "Consume the results stream and write one row per finished task (the latest\n"
        "attempt of each). The format follows --out's extension (.jsonl, .jsonl.zst,\n"
        ".parquet); a deleted, truncated or foreign output is rebuilt from the stream.\n"
        "One writer per output file: a second sink (or run) on it is refused.")
    common.add_workflow(k)
    k.add_argument("--out", required=True, metavar="PATH")
    k.add_argument("--expect", type=int, metavar="N",
                   help="exit 0 once N distinct tasks are in the file")
    k.add_argument("--timeout", type=float, metavar="S", help="give up (exit 1) after S seconds")
    k.add_argument("--kept-only", action="store_true",
                   help="write only rows the workflow's filters kept (done, result.kept true)")
    k.add_argument("--durable", metavar="NAME",
                   help="consumer name (default sink-<output file name>: progress belongs to the "
                        "dataset, not its path; give two same-named outputs distinct names)")
    common.add_stream_replicas(k)
    common.add_metrics(k)
    common.add_nats(k, required=True)
    common.add_common(k)
    k.set_defaults(fn=cmd_sink)

    st = common.add_command(
        sub, "status", "per-role pending / in flight / redelivered, done and failed counts",
        "Read the workflow's streams and consumers and print their state.")
    common.add_workflow(st)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--sample", type=float, default=2.0, metavar="S",
                    help="measure hops/s per role over S seconds (default 2; 0: no rates)")
    st.add_argument("--window", type=float, default=60.0, metavar="S",
                    help="finished tasks/s, tokens/s and the ETA over the last S seconds "
                         "(default 60)")
    common.add_nats(st, required=True)
    common.add_common(st)
    st.set_defaults(fn=cmd_status)


def cmd_submit(args: argparse.Namespace) -> int:
    from matrix_p2p.runtime.rows import check_source, with_source
    from matrix_p2p.runtime.source import submit

    common.positive("--limit", args.limit, allow_zero=True)
    common.positive("--stream-replicas", args.stream_replicas)

    async def body(bus: Bus, spec: WorkflowSpec, stop: asyncio.Event) -> int:
        from matrix_p2p.runtime.topology import Names
        from matrix_p2p.workflow.version import code_hash, resolve

        spec = with_source(spec, args.source)
        digest = code_hash(spec)
        ns = await resolve(bus, Names.of(spec).submitted_bucket, spec, digest, args.version_mode,
                           replicas=args.stream_replicas)
        async with common.metrics(args, "submit") as metrics:
            r = await submit(bus, spec, limit=args.limit, stop=stop, replicas=args.stream_replicas,
                             namespace=ns, code_version=digest, metrics=metrics)
        print(f"submitted {r.submitted} new tasks, {r.already} already submitted, "
              f"{r.bad_rows} bad rows (recorded as failed)", file=sys.stderr)
        if args.retry_failed:
            from matrix_p2p.runtime.attempts import retry_failed

            again = await retry_failed(bus, spec, namespace=ns)
            print(f"resubmitted {len(again)} failed tasks as a new attempt", file=sys.stderr)
        return 130 if stop.is_set() else 0

    return common.with_bus(args, "submit", "stopping submission; re-run to continue", body,
                           check=lambda spec: check_source(with_source(spec, args.source)))


def cmd_sink(args: argparse.Namespace) -> int:
    from matrix_p2p.runtime.files import out_format
    from matrix_p2p.runtime.sink import Sink
    from matrix_p2p.sdnotify import Liveness, supervise

    common.positive("--expect", args.expect, allow_zero=True)
    common.positive("--timeout", args.timeout)
    common.positive("--stream-replicas", args.stream_replicas)

    async def body(bus: Bus, spec: WorkflowSpec, stop: asyncio.Event) -> int:
        ready, written = asyncio.Event(), asyncio.Event()
        alive = Liveness(60.0)  # a fetch waits at most 1 s; a batch's write and fsync, seconds
        n: int | None = None
        async with common.metrics(args, "sink") as metrics, asyncio.TaskGroup() as tg:
            sink = Sink(bus, spec, Path(args.out), durable=args.durable,
                        replicas=args.stream_replicas, kept_only=args.kept_only, metrics=metrics)
            sink.beat = alive.beat
            tg.create_task(supervise(ready, stop, written, alive=alive,
                                     status=f"writing {spec.name} to {args.out}"))
            try:
                async with asyncio.timeout(args.timeout):
                    n = await sink.run(stop, expect=args.expect, ready=ready)
            except TimeoutError:
                pass
            finally:
                written.set()
        if n is None:
            print(f"matrix_p2p: error: timed out after {args.timeout}s with {sink.count}"
                  f"/{args.expect} tasks in {args.out}", file=sys.stderr)
            return 1
        print(f"{n} distinct tasks in {args.out} ({sink.done} done, {sink.failed} failed this "
              f"run, {sink.duplicates} duplicates skipped)"
              + (f"; {sink.counts.line()}" if sink.counts.line() else ""), file=sys.stderr)
        if args.expect is not None and n < args.expect:
            return 130 if stop.is_set() else 1
        return 0

    return common.with_bus(args, "sink", "writing what has arrived", body,
                           check=lambda _spec: out_format(Path(args.out)))


def cmd_status(args: argparse.Namespace) -> int:
    from matrix_p2p.runtime.rates import measure
    from matrix_p2p.runtime.status import render_status, workflow_status

    common.positive("--sample", args.sample, allow_zero=True)
    common.positive("--window", args.window)

    async def body(bus: Bus, spec: WorkflowSpec, stop: asyncio.Event) -> int:
        st = await workflow_status(bus, spec)
        if args.sample:
            st.rates = await measure(bus, spec, sample_s=args.sample, window_s=args.window,
                                     stop=stop)
        print(msgspec.json.encode(st).decode() if args.json else render_status(st))
        return 0

    return common.with_bus(args, "status", "stopping", body)
