"""One export from start to end: read the rows, find the workflow's view, plan, write.
The I/O shell over the pure parts (``views``, ``expr``, ``splits``, ``pairs``,
``formats``, ``plan``, ``card``); the ``export`` command and Python callers use it.

Error handling: user mistakes (a missing file, a bad expression, rows of a
workflow with no ``export:`` section, a target that exists) are one-line
``ConfigError``s raised before anything is written; an export that would hold no
example raises ``NothingToExport`` (exit status 1) and writes nothing.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from matrix_p2p.errors import ConfigError, MatrixError
from matrix_p2p.export import card, plan, read, resolve, write
from matrix_p2p.export.expr import parse
from matrix_p2p.export.formats import FORMATS
from matrix_p2p.export.splits import ALL_TRAIN, parse_splits
from matrix_p2p.export.views import View
from matrix_p2p.workflow import loader
from matrix_p2p.workflow.spec import WorkflowSpec


class NothingToExport(MatrixError):
    """No row gave an example."""


@dataclass(frozen=True)
class Request:
    inputs: list[Path]
    to: Path
    fmt: str = "messages"
    where: str | None = None
    by: str | None = None
    split: str | None = None
    workflow: str | None = None  # a file or bundled name; default: the rows' workflow
    include_failed: bool = False
    ids: bool = True
    rows_per_shard: int = 10_000
    overwrite: bool = False


@dataclass
class Result:
    plan: plan.Plan
    written: list[Path] = field(default_factory=list)
    unreadable: int = 0


def export(req: Request) -> Result:
    """Export the rows of ``req.inputs`` as ``req.fmt`` examples to ``req.to``."""
    if req.fmt not in FORMATS:
        raise ConfigError(f"--format: unknown format {req.fmt!r} (one of {', '.join(FORMATS)})")
    if req.fmt == "preference" and req.by is None:
        raise ConfigError("--format preference needs --by (the score of a row: higher is chosen)")
    if req.fmt != "preference" and req.by is not None:
        raise ConfigError("--by is for --format preference")
    if req.rows_per_shard < 1:
        raise ConfigError("--rows-per-shard: must be at least 1")
    opts = plan.Options(
        fmt=req.fmt, where=parse(req.where, "--where") if req.where is not None else None,
        by=parse(req.by, "--by") if req.by is not None else None,
        splits=parse_splits(req.split) if req.split is not None else ALL_TRAIN,
        include_failed=req.include_failed, ids=req.ids)
    target = write.target_of(req.to, [n for n, _ in opts.splits], req.inputs,
                             overwrite=req.overwrite)
    got = read.read_rows(req.inputs)
    spec = _workflow(req.workflow, plan.workflow_of(got.rows))
    view = resolve.view_of(spec)
    p = plan.build(got.rows, view, opts)
    if p.total == 0:
        reasons = "; ".join(f"{r}: {n}" for r, n in sorted(p.skipped.items(), key=lambda kv: -kv[1]))
        raise NothingToExport(f"no examples: {p.rows_read} rows read"
                              + (f", {got.unreadable} lines unreadable" if got.unreadable else "")
                              + (f"; left out: {reasons}" if reasons else ""))
    prov = card.Provenance(inputs=[str(p_) for p_ in req.inputs], command=_command(req),
                           view=describe(view), version=_version())
    written = write.write(p, target, prov, rows_per_shard=req.rows_per_shard)
    return Result(plan=p, written=written, unreadable=got.unreadable)


def _workflow(ref: str | None, name: str) -> WorkflowSpec:
    if ref is not None:
        return loader.load(ref)
    if not name:
        raise ConfigError("the rows name no workflow: give --workflow FILE")
    if name not in loader.bundled_names():
        raise ConfigError(f"the rows are of workflow {name!r}, which is not bundled: give its "
                          "file with --workflow")
    return loader.load(name)


def describe(view: View) -> str:
    if view.response is not None:
        return "single turn: the prompt and the response from the row"
    users = ", ".join(sorted(view.user)) or "none"
    tools = f"; {len(view.tools)} tools, results from `{view.tool_role}` turns" if view.tools else ""
    return f"assistant: `{view.assistant}`; user: {users}{tools}; other roles left out"


def _command(req: Request) -> str:
    args = ["python", "-m", "matrix_p2p", "export", *map(str, req.inputs), "--format", req.fmt]
    for flag, value in (("--where", req.where), ("--by", req.by), ("--split", req.split),
                        ("--workflow", req.workflow)):
        if value is not None:
            args += [flag, value]
    if req.include_failed:
        args.append("--include-failed")
    return shlex.join([*args, "--to", str(req.to)])


def _version() -> str:
    try:
        return metadata.version("matrix_p2p")
    except metadata.PackageNotFoundError:
        return "unknown"


def report(result: Result) -> list[str]:
    """What ``export`` prints: examples per split, the files, the rows left out."""
    p = result.plan
    lines = [f"exported {p.total:,} {p.fmt} examples from {p.rows_read:,} rows of {p.workflow}"]
    for name, _ in p.splits:
        st = p.stats[name]
        lines.append(f"  {name:<10} {st.examples:>8,} examples  ({st.rows:,} rows, "
                     f"{st.answer_tokens:,} answer tokens)")
    if len(result.written) <= 4:
        lines += [f"  wrote {path}" for path in result.written]
    else:
        lines.append(f"  wrote {len(result.written)} files under "
                     f"{os.path.commonpath([str(w) for w in result.written])}")
    if result.unreadable:
        lines.append(f"  {result.unreadable:,} lines were not JSON objects (left out)")
    left = sum(p.skipped.values())
    if left:
        lines.append(f"{left:,} rows left out:")
        for reason, n in sorted(p.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            eg = ", ".join(p.samples.get(reason, []))
            lines.append(f"  {n:>8,}  {reason}" + (f"  (e.g. {eg})" if eg else ""))
    return lines
