"""``report``: what the rows of an output file look like (``matrix_p2p.report``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from matrix_p2p.cli import common

DESCRIPTION = """\
Look at the rows a run wrote (.jsonl, .jsonl.zst or .parquet): the rows by status, the
kept and filtered ones, the workflow's own figures (its `summary:` section), tokens
and cost by role (when the workflow's LLM resources have prices: the cost per kept
row is every row's tokens over the kept rows), histograms of the reward, the
verdicts, the filter reasons, turns and tokens per task, latency per turn by role,
and a few example rows as conversations (a kept one, a filtered one and a failed one
first).

A replay's or a fan-out child's row counts only its own turns, as its usage does.
--html writes the same as one self-contained page (inline SVG plots, no script, no
network): open it from the file.

exit status: 0; 2 for a missing file, a file that is not a run's output, or one with
no rows.

examples:
  python -m matrix_p2p report out/tau.jsonl
  python -m matrix_p2p report out/coral.jsonl --html out/coral-report.html
"""


def add_parsers(sub: Any) -> None:
    p = common.add_command(sub, "report", "the rows of an output file: counts, figures, "
                           "histograms, examples (text, or an HTML page)", DESCRIPTION)
    p.add_argument("out", metavar="OUT", type=Path,
                   help="a rows file a run wrote (.jsonl, .jsonl.zst, .parquet)")
    p.add_argument("--html", metavar="FILE", type=Path,
                   help="also write a self-contained HTML page with the plots")
    p.add_argument("--workflow", metavar="WORKFLOW",
                   help="the workflow file whose figures and prices to use (default: the "
                        "rows' workflow, by its bundled name)")
    p.add_argument("--examples", type=int, default=3, metavar="N",
                   help="example rows to show (default 3)")
    common.add_common(p)
    p.set_defaults(fn=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from matrix_p2p.report import job, text

    common.positive("--examples", args.examples, allow_zero=True)
    if args.html is not None:
        job.check_html_target(args.html, args.out)
    report = job.make_report(args.out, workflow=args.workflow, examples=args.examples)
    if args.html is not None:
        job.write_html(report, args.html)
    print("\n".join(text.render(report)))
    if args.html is not None:
        print(f"\nwrote {args.html}")
    return 0
