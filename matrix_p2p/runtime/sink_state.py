"""What a sink knows about its output file between runs, and rebuilding it.

Next to ``<out>`` a small sidecar ``<out>.mx.json`` records which results
stream the file was written from (its identity: a hash of the stream's first
stored result), how many tasks it holds and the byte length of its last
committed write. At start-up the sink trusts the file only if all three
agree and each task is in it once; otherwise (the file was deleted, truncated,
written by another run or store, or appended to by two writers) the file is
rebuilt from the results stream, atomically.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import structlog

from matrix_p2p import envelope
from matrix_p2p.bus import Bus
from matrix_p2p.envelope import EnvelopeError, Task
from matrix_p2p.runtime.attempts import Latest, split_attempt
from matrix_p2p.runtime.files import read_lines, replace_file
from matrix_p2p.runtime.topology import Names

log = structlog.get_logger(__name__)


class Sidecar(msgspec.Struct, kw_only=True):
    workflow: str
    stream: str
    identity: str  # "" while the results stream is empty
    format: str
    count: int = 0
    good_length: int = 0
    namespace: str | None = None  # the code version's id namespace it keeps (None: all)
    tasks: str | None = None  # the digest of the run's task set it holds (None: every result)


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".mx.json")


def load_sidecar(out: Path) -> Sidecar | None:
    try:
        return msgspec.json.decode(sidecar_path(out).read_bytes(), type=Sidecar)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def save_sidecar(out: Path, side: Sidecar) -> None:
    """Atomically (temp and rename): a crash leaves the old or the new sidecar."""
    replace_file(sidecar_path(out), [msgspec.json.encode(side)], "json")


async def stream_identity(bus: Bus, names: Names) -> str:
    """A hash of the first stored result: a new store (or a deleted stream) differs."""
    first, last = await bus.stream_bounds(names.results_stream)
    if last == 0:
        return ""
    m = await bus.next_msg(names.results_stream, max(first, 1))
    return hashlib.sha1(m.data).hexdigest()[:16] if m is not None else ""


def trust_reason(side: Sidecar | None, staging: Path, *, identity: str, fmt: str,
                 stream: str, namespace: str | None = None,
                 tasks: str | None = None) -> str | None:
    """Why the file cannot be trusted as it is (then it is rebuilt), or None."""
    if side is None:
        return "no sidecar"
    if not staging.exists():
        return "missing"
    if side.stream != stream or side.format != fmt:
        return "written for another stream or format"
    if side.namespace != namespace:
        return "written for another code version"
    if side.tasks != tasks:
        return "written for another set of tasks (another source, --limit or trials)"
    if side.identity != identity and (side.identity or side.count):
        return "written by another run"
    if staging.stat().st_size < side.good_length:
        return "shorter than its last write"
    return None


def load_rows(lines: list[bytes], latest: Latest) -> str | None:
    """Offer each row of a file the sidecar vouches for to ``latest``, in one pass. Why
    the file cannot be trusted after all (then it is rebuilt), or None: a task twice
    (by base id, any attempts: the sink keeps one row per task, so two rows mean two
    writers appended to it), or a line that is not a row."""
    for ln in lines:
        try:
            row = msgspec.json.decode(ln)
            verdict = latest.offer(row["id"], row["status"])
        except (msgspec.DecodeError, KeyError, TypeError):
            return "unreadable line"
        if verdict != "new":
            return "duplicate ids"
    return None


async def rebuild(bus: Bus, names: Names, staging: Path, fmt: str,
                  to_line: Callable[[Task], bytes], latest: Latest, *,
                  accept: Callable[[str], bool] = lambda _: True,
                  prepare: Callable[[Task], Awaitable[object]] | None = None) -> int:
    """Write every result in the stream (the latest attempt of each task) to ``staging``,
    atomically. Fills ``latest``; returns the file's length. ``prepare`` runs on each
    row's task first (the sink resolves offloaded values there)."""
    rows: dict[str, bytes] = {}
    async for m in bus.iter_stream(names.results_stream):
        try:
            task = envelope.decode(m.data)
        except EnvelopeError:
            continue  # the sink's consumer dead-letters it when it gets there
        if accept(task.id) and latest.offer(task.id, task.status) in ("new", "supersedes"):
            if prepare is not None:
                await prepare(task)
            rows[split_attempt(task.id)[0]] = to_line(task)
    return replace_file(staging, list(rows.values()), fmt)


def keep_latest(lines: list[bytes], keep: set[str]) -> list[bytes]:
    """The lines whose ``id`` is in ``keep`` (earlier attempts dropped)."""
    out: list[Any] = []
    for ln in lines:
        try:
            tid = msgspec.json.decode(ln)["id"]
        except (msgspec.DecodeError, KeyError, TypeError):
            continue
        if tid in keep:
            out.append(ln if ln.endswith(b"\n") else ln + b"\n")
    return out


def sink_name(out: Path) -> str:
    """The dataset's name: the output's file name without its format extensions."""
    name = out.name
    for ext in (".zst", ".jsonl", ".parquet", ".json"):
        name = name.removesuffix(ext)
    return name or "out"


def preserve_version(out: Path, staging: Path, fmt: str) -> Path | None:
    """Move an output written for another code version aside (``--new-version`` starts
    fresh rows; the earlier version's stay on disk): ``<name>.code-<hash><ext>``, the hash
    read from its first row. Returns the new path (None: nothing to keep)."""
    source = out if fmt == "parquet" and out.exists() else staging
    lines = read_lines(staging, fmt) if staging.exists() else []
    if not lines and not (fmt == "parquet" and out.exists()):
        return None
    label = "earlier"
    if lines:
        try:
            label = "code-" + str(msgspec.json.decode(lines[0]).get("code_version") or "unknown")
        except (msgspec.DecodeError, AttributeError):
            pass
    ext = out.name[len(sink_name(out)):]
    target = out.with_name(f"{sink_name(out)}.{label}{ext}")
    n = 1
    while target.exists():
        n += 1
        target = out.with_name(f"{sink_name(out)}.{label}-{n}{ext}")
    source.replace(target)
    if source != staging and staging.exists():
        staging.unlink()
    log.warning("sink.earlier_version_kept", out=str(out), moved_to=str(target))
    return target
