"""``dlq list|show|requeue`` and ``replay``: operations on stored messages.

The work is in ``matrix_p2p.runtime.deadletters`` and ``matrix_p2p.runtime.replay``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from matrix_p2p.bus import Bus
from matrix_p2p.cli import common
from matrix_p2p.errors import ConfigError
from matrix_p2p.workflow.spec import WorkflowSpec


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z" if ts else "-"


def _one_line(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_dlq_list(args: argparse.Namespace) -> int:
    import msgspec

    from matrix_p2p.runtime.deadletters import dlq_list
    from matrix_p2p.runtime.topology import Names

    common.positive("--limit", args.limit, allow_zero=True)

    async def body(bus: Bus, spec: WorkflowSpec, stop: asyncio.Event) -> int:
        letters = await dlq_list(bus, Names.of(spec), limit=args.limit)
        if args.json:
            for dl in letters:
                print(msgspec.json.encode(dl).decode())
            return 0
        if not letters:
            print(f"no dead letters for workflow {spec.name}")
            return 0
        print(f"{'seq':>6}  {'time (UTC)':<20}  {'size':>9}  {'subject':<32}  reason")
        for dl in letters:
            print(f"{dl.seq:>6}  {_when(dl.time):<20}  {dl.size:>9}  "
                  f"{_one_line(dl.subject, 32):<32}  {_one_line(dl.reason, 100)}")
        print(f"{len(letters)} dead letter(s); `dlq show {spec.name} SEQ` for one, "
              f"`dlq requeue {spec.name} SEQ|--all` to requeue", file=sys.stderr)
        return 0

    return common.with_bus(args, "dlq", "stopping", body)


def cmd_dlq_show(args: argparse.Namespace) -> int:
    import msgspec

    from matrix_p2p.runtime.deadletters import dlq_show
    from matrix_p2p.runtime.topology import Names

    common.positive("SEQ", args.seq)

    async def body(bus: Bus, spec: WorkflowSpec, stop: asyncio.Event) -> int:
        d = await dlq_show(bus, Names.of(spec), args.seq)
        if args.json:
            print(msgspec.json.encode({
                "letter": d.letter, "headers": d.headers, "task": d.task,
                "decode_error": d.decode_error,
            }).decode())
            return 0
        dl = d.letter
        print(f"dead letter #{dl.seq} of {spec.name}, stored {_when(dl.time)}, {dl.size} bytes")
        print("headers:")
        for k, v in sorted(d.headers.items()):
            print(f"  {k}: {v}")
        if d.task is not None:
            print("envelope:")
            print(msgspec.json.format(msgspec.json.encode(d.task).decode(), indent=2))
        else:
            print(f"envelope: not decodable ({d.decode_error})")
            print(f"first bytes: {d.data[:64]!r}")
        return 0

    return common.with_bus(args, "dlq", "stopping", body)


def cmd_dlq_requeue(args: argparse.Namespace) -> int:
    from matrix_p2p.runtime.deadletters import dlq_requeue

    if args.all == bool(args.seq):
        raise ConfigError("dlq requeue: give dead-letter sequence numbers or --all (not both)")
    for seq in args.seq or ():
        common.positive("SEQ", seq)

    async def body(bus: Bus, spec: WorkflowSpec, stop: asyncio.Event) -> int:
        r = await dlq_requeue(bus, spec, None if args.all else args.seq, role=args.role,
                              dry_run=args.dry_run)
        for seq, why in sorted(r.skipped.items()):
            print(f"skipped #{seq}: {why}", file=sys.stderr)
        verb = "would requeue" if args.dry_run else "requeued"
        where = f"role {args.role}" if args.role else "their original subjects"
        print(f"{verb} {len(r.requeued)} dead letter(s) to {where}, skipped {len(r.skipped)}",
              file=sys.stderr)
        return 1 if r.skipped and not r.requeued else 0

    return common.with_bus(args, "dlq", "stopping", body)


def cmd_replay(args: argparse.Namespace) -> int:
    from matrix_p2p.runtime.replay import replay
    from matrix_p2p.workflow.loader import load

    common.positive("--limit", args.limit, allow_zero=True)
    common.positive("--generation", args.generation)
    common.positive("--from-generation", args.from_generation, allow_zero=True)
    target = load(args.into) if args.into else None

    async def body(bus: Bus, spec: WorkflowSpec, stop: asyncio.Event) -> int:
        r = await replay(bus, spec, role=args.role, which=args.status,
                         generation=args.generation, from_generation=args.from_generation,
                         target=target, limit=args.limit, dry_run=args.dry_run)
        verb = "would replay" if args.dry_run else "replayed"
        into = (target or spec).name
        print(f"{verb} {r.replayed} {args.status} task(s) into {into}.{args.role} as generation "
              f"{args.generation} (ids <id>~r{args.generation}); {r.already} replayed before, "
              f"{r.skipped} skipped", file=sys.stderr)
        return 0

    return common.with_bus(args, "replay", "stopping the replay; re-run to resume", body)


def add_parsers(sub: Any) -> None:
    """Register ``dlq list|show|requeue`` and ``replay``."""
    fmt = argparse.RawDescriptionHelpFormatter
    dlq = sub.add_parser(
        "dlq", help="inspect and requeue dead letters (rejected, undecodable input)",
        formatter_class=fmt,
        description="Dead letters: messages a worker or sink could not decode or that arrived\n"
                    "on the wrong subject, kept with their original bytes on mx.<wf>.dlq\n"
                    "(headers Mx-Reason, Mx-Subject).\n\n"
                    "examples:\n"
                    "  python -m matrix_p2p dlq list coral --nats URL\n"
                    "  python -m matrix_p2p dlq show coral 17 --nats URL\n"
                    "  python -m matrix_p2p dlq requeue coral --all --role judge --nats URL")
    dsub = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)

    ls = dsub.add_parser("list", help="seq, time, size, original subject and reason of each",
                         description="List dead letters in arrival order.")
    common.add_workflow(ls)
    ls.add_argument("--limit", type=int, metavar="N", help="only the first N")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(fn=cmd_dlq_list)

    sh = dsub.add_parser("show", help="one dead letter: headers and the decoded envelope",
                         description="Show one dead letter with its headers and, when its bytes\n"
                                     "decode, the envelope as JSON.", formatter_class=fmt)
    common.add_workflow(sh)
    sh.add_argument("seq", type=int, metavar="SEQ", help="sequence number from `dlq list`")
    sh.add_argument("--json", action="store_true", help="machine-readable output")
    sh.set_defaults(fn=cmd_dlq_show)

    rq = dsub.add_parser(
        "requeue", help="publish dead letters back and remove them from the DLQ",
        formatter_class=fmt,
        description="Publish dead letters back to the subject they arrived on, or with --role\n"
                    "to that role (the envelope's role is rewritten), then delete them from\n"
                    "the dead-letter stream. A requeue is dedup'd by msg-id, so a crash in\n"
                    "between does not requeue twice. Truncated dead letters are skipped.")
    common.add_workflow(rq)
    rq.add_argument("seq", type=int, nargs="*", metavar="SEQ", help="sequence numbers")
    rq.add_argument("--all", action="store_true", help="every dead letter of the workflow")
    rq.add_argument("--role", metavar="ROLE", help="requeue to this role instead")
    rq.add_argument("--dry-run", action="store_true", help="say what would be requeued")
    rq.set_defaults(fn=cmd_dlq_requeue)
    for p in (ls, sh, rq):
        common.add_nats(p, required=True)
        common.add_common(p)

    rp = sub.add_parser(
        "replay", help="feed stored results into a role (e.g. re-judge without regenerating)",
        formatter_class=fmt,
        description="Feed finished tasks from the results stream back into a role. Each\n"
                    "replayed task keeps its turns, becomes running at --role, and gets the id\n"
                    "<id>~r<generation>, so the sink writes it as a new row next to the\n"
                    "original. Running the same replay again publishes nothing new.\n\n"
                    "example (re-judge every done coral task with the judge of coral_v2):\n"
                    "  python -m matrix_p2p replay coral --role judge --into coral_v2.yaml \\\n"
                    "      --nats URL\n"
                    "then run workers for coral_v2's judge and a sink for coral_v2.")
    rp.add_argument("workflow", metavar="WORKFLOW", help="the workflow whose results to read")
    rp.add_argument("--role", required=True, metavar="ROLE", help="the role to feed")
    rp.add_argument("--status", choices=("done", "failed", "all"), default="done",
                    help="which results (default: done)")
    rp.add_argument("--into", metavar="WORKFLOW",
                    help="publish into this workflow's role (default: the same workflow)")
    rp.add_argument("--generation", type=int, default=1, metavar="G",
                    help="replay generation: new ids are <id>~r<G> (default 1)")
    rp.add_argument("--from-generation", type=int, default=0, metavar="G0",
                    help="replay results of this generation (default 0: the original tasks)")
    rp.add_argument("--limit", type=int, metavar="N", help="at most N tasks")
    rp.add_argument("--dry-run", action="store_true", help="count, publish nothing")
    common.add_nats(rp, required=True)
    common.add_common(rp)
    rp.set_defaults(fn=cmd_replay)
