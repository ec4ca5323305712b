"""``export``: a run's rows as training data (``matrix_p2p.export``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from matrix_p2p.cli import common

DESCRIPTION = """\
Turn the rows a run wrote (.jsonl, .jsonl.zst or .parquet) into what a trainer reads:
  messages    {"messages": [...], "tools": [...]}: OpenAI chat format, with the
              assistant's tool_calls and role: tool results
  sharegpt    {"conversations": [{"from": "human"|"gpt"|..., "value": ...}]}
  preference  {"prompt": [...], "chosen": [...], "rejected": [...]}: the best and the
              worst trial of each input row by --by (higher is chosen)
The workflow's `export:` section says which role is the assistant, which roles are the
user, and where the system prompt comes from (docs/agents.md). Only done rows are
used unless --include-failed; every row left out is counted, with its reason.

--where and --by take expressions on row fields: comparisons (== != < <= > >=) of
dotted fields (result.reward, status), strings, numbers, true, false, null, joined
with and, or, not and parentheses.

--to DIR writes Parquet shards and a dataset card (README.md) that
datasets.load_dataset(DIR) reads; --to FILE.jsonl|.jsonl.zst|.parquet one file per
split ({split} in the name when there are several).

exit status: 0 when examples were written; 1 when no row gave one; 2 for a usage
error (a missing file, an unknown format, a bad expression).

examples:
  python -m matrix_p2p export out/coral.jsonl --format messages --to out/coral-sft.jsonl
  python -m matrix_p2p export out/tau.jsonl --where 'result.reward >= 1' \\
      --split train=0.95,test=0.05 --to out/tau-sft
  python -m matrix_p2p export out/code_verify.jsonl --format preference \\
      --by 'result.verdict == "pass"' --to out/code-dpo.jsonl
"""


def add_parsers(sub: Any) -> None:
    p = common.add_command(sub, "export", "turn rows into training data (messages, sharegpt, "
                           "preference pairs)", DESCRIPTION)
    p.add_argument("inputs", nargs="+", metavar="OUT", type=Path,
                   help="rows files a run wrote (.jsonl, .jsonl.zst, .parquet)")
    p.add_argument("--format", default="messages", metavar="FORMAT", dest="fmt",
                   help="messages (default), sharegpt or preference")
    p.add_argument("--to", required=True, metavar="DIR|FILE", type=Path,
                   help="a directory (Parquet shards and a dataset card) or a .jsonl, "
                        ".jsonl.zst or .parquet file")
    p.add_argument("--where", metavar="EXPR",
                   help='keep the rows where EXPR holds, e.g. \'result.reward >= 1 and '
                        'status == "done"\'')
    p.add_argument("--by", metavar="EXPR",
                   help="preference: the score of a row (a number, or true/false), e.g. "
                        "result.reward; higher is chosen")
    p.add_argument("--split", metavar="NAME=SHARE,...",
                   help="e.g. train=0.95,test=0.05 (default: all in train); a row's split is "
                        "a hash of its id, so it never moves")
    p.add_argument("--workflow", metavar="WORKFLOW",
                   help="the workflow file whose export: section to use (default: the rows' "
                        "workflow, by its bundled name)")
    p.add_argument("--include-failed", action="store_true",
                   help="also rows whose task failed (by default only done rows)")
    p.add_argument("--rows-per-shard", type=int, default=10_000, metavar="N",
                   help="examples per Parquet shard of a directory (default 10000)")
    p.add_argument("--no-ids", action="store_true",
                   help="leave out the row ids each example carries (id, chosen_id, ...)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing file, or a directory an earlier export wrote")
    common.add_common(p)
    p.set_defaults(fn=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from matrix_p2p.export import Request, export
    from matrix_p2p.export.job import report

    result = export(Request(
        inputs=list(args.inputs), to=args.to, fmt=args.fmt, where=args.where, by=args.by,
        split=args.split, workflow=args.workflow, include_failed=args.include_failed,
        ids=not args.no_ids, rows_per_shard=args.rows_per_shard, overwrite=args.overwrite))
    for line in report(result):
        print(line, file=sys.stderr)
    return 0
