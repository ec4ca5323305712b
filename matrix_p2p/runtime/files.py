"""Dataset files: JSON lines, zstd-compressed JSON lines, Parquet. Appends are made
durable (fsync) by ``commit``; a torn last line from a crash is cut off on reading."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import IO, Any

import structlog

from matrix_p2p.errors import ConfigError

log = structlog.get_logger(__name__)


class RowWriter:
    """Appends JSON lines to a plain or zstd-compressed file; ``commit`` makes them durable."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        path.parent.mkdir(parents=True, exist_ok=True)
        self._raw: IO[bytes] = open(path, "ab")
        if fmt == "jsonl.zst":
            zstandard = _import_zstd()
            self._cctx = zstandard.ZstdCompressor()
        self._buf: list[bytes] = []

    def write(self, line: bytes) -> None:
        self._buf.append(line)

    def commit(self) -> None:
        if not self._buf:
            return
        data = b"".join(self._buf)
        self._buf.clear()
        if self.fmt == "jsonl.zst":
            data = self._cctx.compress(data)  # one frame per commit: frames concatenate
        self._raw.write(data)
        self._raw.flush()
        os.fsync(self._raw.fileno())

    def close(self) -> None:
        self.commit()
        self._raw.close()


def _import_zstd() -> Any:
    try:
        import zstandard
    except ImportError:
        raise ConfigError("sink format jsonl.zst needs 'zstandard' (pip install 'matrix_p2p[sinks]')"
                          ) from None
    return zstandard


def _read_lines(path: Path, fmt: str) -> tuple[list[bytes], int]:
    """The complete lines of an existing output and the byte length they span (plain only)."""
    raw = path.read_bytes()
    if fmt == "jsonl.zst":
        zstandard = _import_zstd()
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True)
        chunks = []
        try:
            while chunk := reader.read(1 << 20):
                chunks.append(chunk)
        except zstandard.ZstdError:
            log.warning("sink.torn_zstd_frame", path=str(path))  # keep the frames before it
        lines = b"".join(chunks).split(b"\n")
        return [ln for ln in lines[:-1] if ln.strip()], len(raw)
    good_end = raw.rfind(b"\n") + 1
    return [ln for ln in raw[:good_end].split(b"\n") if ln.strip()], good_end


def load_written_ids(path: Path, fmt: str = "jsonl") -> set[str]:
    """Ids already in the output; a torn last line (crash mid-write) is cut off."""
    if not path.exists():
        return set()
    lines, good_end = _read_lines(path, fmt)
    if fmt == "jsonl" and good_end < path.stat().st_size:
        log.warning("sink.truncated_torn_line", path=str(path), bytes=path.stat().st_size - good_end)
        with path.open("r+b") as fh:
            fh.truncate(good_end)
    ids: set[str] = set()
    for ln in lines:
        try:
            ids.add(json.loads(ln)["id"])
        except (ValueError, KeyError, TypeError):
            log.warning("sink.unreadable_line", path=str(path))
    return ids


def announced_children(path: Path, fmt: str = "jsonl") -> int:
    """The children the fanned-out parents in the output spawned (their ``children``)."""
    if not path.exists():
        return 0
    total = 0
    for ln in _read_lines(path, fmt)[0]:
        if b'"children"' in ln:
            try:
                total += int(json.loads(ln).get("children", 0))
            except (ValueError, TypeError, AttributeError):
                continue
    return total


def write_parquet(jsonl: Path, out: Path) -> None:
    try:
        import pyarrow.json as pj
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("sink format parquet needs 'pyarrow' (pip install 'matrix_p2p[sinks]')"
                          ) from None
    if jsonl.exists() and jsonl.stat().st_size:
        pq.write_table(pj.read_json(str(jsonl)), str(out))
