"""Reading the rows a run wrote: ``.jsonl``, ``.jsonl.zst`` (``runtime/files``'s readers,
a torn last line left out) or ``.parquet``. A line that is not a JSON object is
counted, not fatal: the report says how many."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from matrix_p2p.errors import ConfigError
from matrix_p2p.runtime.files import SUPPORTED, format_of, read_lines

_decode = msgspec.json.Decoder()


@dataclass
class Rows:
    rows: list[dict[str, Any]] = field(default_factory=list)
    unreadable: int = 0  # lines that are not JSON objects


def read_rows(paths: list[Path]) -> Rows:
    """The rows of ``paths`` in order. A missing file or one of another format is a
    one-line ``ConfigError`` before anything is read."""
    fmts = []
    for path in paths:
        fmt = format_of(path)
        if fmt is None:
            raise ConfigError(f"{path}: not a rows file (supported: {SUPPORTED})")
        if not path.is_file():
            raise ConfigError(f"{path}: no such file")
        fmts.append(fmt)
    out = Rows()
    for path, fmt in zip(paths, fmts, strict=True):
        if fmt == "parquet":
            out.rows.extend(_parquet(path))
            continue
        for line in read_lines(path, fmt):
            try:
                row = _decode.decode(line)
            except msgspec.DecodeError:
                out.unreadable += 1
                continue
            if isinstance(row, dict):
                out.rows.append(row)
            else:
                out.unreadable += 1
    return out


def _parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"{path}: reading Parquet needs 'pyarrow' (pip install "
                          "'matrix_p2p[parquet]')") from None
    try:
        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ConfigError(f"{path}: not a readable Parquet file: {exc}") from None
    return rows
