"""``submit``, ``sink`` and ``status``: tasks in, dataset out, and what is in between."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from matrix_p2p.bus import Bus
from matrix_p2p.cli import common
from matrix_p2p.errors import ConfigError
from matrix_p2p.workflow.spec import WorkflowSpec

if TYPE_CHECKING:
    from matrix_p2p.runtime.sink import Sink
    from matrix_p2p.runtime.topology import Names


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
    k.add_argument("--limit", type=int, metavar="N",
                   help="write exactly the tasks `submit --limit N` (with the same --source) "
                        "creates, and exit once each has ended: 0 if all are done, 1 if any "
                        "failed")
    common.add_source(k)
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
    from matrix_p2p.runset.taskset import plan
    from matrix_p2p.runtime.rows import check_source, with_source
    from matrix_p2p.runtime.source import submit

    common.positive("--limit", args.limit, allow_zero=True)
    common.positive("--stream-replicas", args.stream_replicas)

    async def body(bus: Bus, spec: WorkflowSpec, stop: asyncio.Event) -> int:
        from matrix_p2p.runtime.topology import Names
        from matrix_p2p.workflow.version import code_hash, resolve

        spec = with_source(spec, args.source)
        plan(spec, args.limit)  # duplicate ids: one line, before anything is submitted
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

            again = await retry_failed(bus, spec, namespace=ns, code_version=digest)
            print(f"resubmitted {len(again)} failed tasks as a new attempt", file=sys.stderr)
        return 130 if stop.is_set() else 0

    return common.with_bus(args, "submit", "stopping submission; re-run to continue", body,
                           check=lambda spec: check_source(with_source(spec, args.source)))


def cmd_sink(args: argparse.Namespace) -> int:
    from matrix_p2p.runset.taskset import plan
    from matrix_p2p.runtime.files import out_format
    from matrix_p2p.runtime.rows import with_source
    from matrix_p2p.runtime.sink import Sink
    from matrix_p2p.runtime.topology import Names
    from matrix_p2p.sdnotify import Liveness, supervise
    from matrix_p2p.workflow.version import code_hash, current_namespace

    common.positive("--expect", args.expect, allow_zero=True)
    common.positive("--limit", args.limit, allow_zero=True)
    as_set = args.limit is not None or args.source is not None
    if as_set and args.expect is not None:
        raise ConfigError("sink: --expect counts rows, --limit/--source name the tasks: give one")
    common.positive("--timeout", args.timeout)
    common.positive("--stream-replicas", args.stream_replicas)

    async def body(bus: Bus, spec: WorkflowSpec, stop: asyncio.Event) -> int:
        ready, written, ended = asyncio.Event(), asyncio.Event(), asyncio.Event()
        alive = Liveness(60.0)  # a fetch waits at most 1 s; a batch's write and fsync, seconds
        n: int | None = None
        names = Names.of(spec)
        tasks = None
        if as_set:  # the run's set, as `submit` with the same options made it
            spec = with_source(spec, args.source)
            planned = plan(spec, args.limit)
            ns = await current_namespace(bus, names.submitted_bucket, code_hash(spec))
            tasks = planned.in_namespace(ns)
        async with common.metrics(args, "sink") as metrics, asyncio.TaskGroup() as tg:
            sink = Sink(bus, spec, Path(args.out), durable=args.durable,
                        replicas=args.stream_replicas, kept_only=args.kept_only, metrics=metrics,
                        tasks=tasks)
            sink.beat = alive.beat
            tg.create_task(supervise(ready, stop, written, alive=alive,
                                     status=f"writing {spec.name} to {args.out}"))
            if tasks is not None:
                tg.create_task(_until_ended(bus, names, sink, ready, stop, ended))
            try:
                async with asyncio.timeout(args.timeout):
                    n = await sink.run(ended if tasks is not None else stop, expect=args.expect,
                                       ready=ready)
            except TimeoutError:
                ended.set()
            finally:
                written.set()
        if n is None:
            want = len(tasks) if tasks is not None else args.expect
            print(f"matrix_p2p: error: timed out after {args.timeout}s with {sink.count}"
                  f"/{want} tasks in {args.out}", file=sys.stderr)
            return 1
        print(sink_message(sink, args.out), file=sys.stderr)
        if tasks is not None:  # the submit + sink form of a run: its exit status
            if not sink.finished():
                return 130 if stop.is_set() else 1
            failed = sink.latest.counts()[1]
            if failed:
                print(f"matrix_p2p: {failed} task(s) failed: resubmit them with "
                      "`submit --retry-failed`", file=sys.stderr)
            return 1 if failed else 0
        if args.expect is not None and n < args.expect:
            return 130 if stop.is_set() else 1
        return 0

    return common.with_bus(args, "sink", "writing what has arrived", body,
                           check=lambda _spec: out_format(Path(args.out)))


async def _until_ended(bus: Bus, names: Names, sink: Sink, ready: asyncio.Event,
                       stop: asyncio.Event, ended: asyncio.Event) -> None:
    """Set ``ended`` once every task of the sink's set has ended (or on ``stop``)."""
    from matrix_p2p.aio import wait_any
    from matrix_p2p.runset.ended import all_ended

    kv = await bus.key_value(names.submitted_bucket)
    await wait_any(ready, stop, ended)
    while not (stop.is_set() or ended.is_set()):
        sink.changed.clear()
        if await all_ended(sink, kv):
            break
        await wait_any(sink.changed, stop, ended)
    ended.set()


def sink_message(sink: Sink, out: str) -> str:
    """What ``sink`` says when it stops: the rows in the file (its lines), the tasks in the
    output by status, what this run wrote, then the filters and the workflow's figures."""
    from matrix_p2p.report import figures

    done, failed = sink.latest.counts()
    left_out = sink.count - sink.file_rows
    lines = [
        f"{sink.file_rows:,} rows in {out}; its tasks: {done:,} done, {failed:,} failed"
        + (f", {sink.children:,} of them fan-out children" if sink.children else "")
        + (f"; {left_out:,} more left out by --kept-only (ids in {out}.skipped)"
           if left_out else ""),
        f"  this run: {sink.done:,} done and {sink.failed:,} failed as they finished"
        + (f", {sink.rebuilt:,} rebuilt from the results stream" if sink.rebuilt else "")
        + f", {sink.duplicates:,} duplicates skipped",
    ]
    if sink.counts.line():
        lines.append(f"  filters: {sink.counts.line()}")
    lines += [f"  {line}" for line in figures.render(sink.figures.results())]
    return "\n".join(lines)


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
