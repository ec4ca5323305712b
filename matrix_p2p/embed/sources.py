"""``source=`` of the Python API: what the CLI's ``--source`` takes, or rows in memory.

A string or path is ``--source`` (a JSONL/Parquet path or glob, or ``hf:NAME[:SPLIT]``).
Rows in memory (an iterable of dicts, a pandas ``DataFrame``, a Hugging Face
``datasets.Dataset``; recognised by shape, neither library is imported) are
written once to ``<store>/rows/rows-<hash>.jsonl``, named by the hash of their
bytes, and the run reads that file: the same rows give the same file, so the
same task ids (``source.id_field``, or ``rows-<hash>-<line>``) and a second run
resumes as it would from any file; different rows never share ids.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

from matrix_p2p.errors import ConfigError
from matrix_p2p.runtime.rows import with_source
from matrix_p2p.workflow.spec import WorkflowSpec

ROWS_DIR = "rows"


def _enc_hook(obj: Any) -> Any:
    # what data frames and datasets hold besides plain JSON: numpy scalars and arrays,
    # pandas timestamps (datetime, date, bytes, UUID and Decimal msgspec encodes itself)
    if callable(getattr(obj, "item", None)) and getattr(obj, "shape", None) == ():
        return obj.item()
    if callable(getattr(obj, "tolist", None)):
        return obj.tolist()
    if callable(getattr(obj, "isoformat", None)):
        return obj.isoformat()
    raise TypeError(f"a {type(obj).__name__} is not a JSON value")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)


def _records(source: object) -> Iterator[object]:
    """The rows of ``source``, one by one. Raises ``TypeError`` for what is not rows."""
    if callable(getattr(source, "to_dict", None)) and hasattr(source, "columns"):
        # a DataFrame (iterating one yields its column names)
        records: Any = source.to_dict(orient="records")  # type: ignore[attr-defined]
        yield from records
        return
    if isinstance(source, Mapping):
        raise TypeError("source: expected rows (dicts), got a mapping; a DatasetDict? pick a "
                        "split (ds['train']); one row? pass [row]")
    if isinstance(source, bytes | bytearray) or not isinstance(source, Iterable):
        raise TypeError(f"source: expected a path, a glob, 'hf:NAME' or rows (dicts), got "
                        f"{type(source).__name__}")
    yield from source


def write_rows(source: object, directory: Path) -> Path:
    """Rows in memory as a JSONL file in ``directory``, named by the hash of its bytes
    (written to a temporary file, then renamed: a crash leaves no half file by that name).

    Error handling: a row that is not a dict, or holds a value JSON cannot carry, is a
    ``TypeError`` naming the row (from 0); nothing is left behind.
    """
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".rows-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            for i, row in enumerate(_records(source)):
                if not isinstance(row, Mapping):
                    raise TypeError(f"source: row {i}: expected a dict, got {type(row).__name__}")
                try:
                    line = _encoder.encode(row if isinstance(row, dict) else dict(row)) + b"\n"
                except (TypeError, msgspec.EncodeError) as exc:
                    raise TypeError(f"source: row {i}: {exc}") from None
                digest.update(line)
                fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        path = directory / f"rows-{digest.hexdigest()[:16]}.jsonl"
        os.replace(tmp, path)  # the same rows: the same bytes, so replacing changes nothing
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def apply(spec: WorkflowSpec, source: object, store: Path) -> WorkflowSpec:
    """``spec`` reading ``source`` (None: its own source). In-memory rows are written
    under ``store`` first (``write_rows``)."""
    if source is None:
        return spec
    if isinstance(source, str | os.PathLike):
        text = os.fspath(source)
        if not isinstance(text, str):
            raise TypeError(f"source: expected a str path, got {type(text).__name__}")
        if not text.strip():
            raise ConfigError("source: expected a path, a glob or 'hf:NAME', got ''")
        return with_source(spec, text)
    return with_source(spec, str(write_rows(source, store / ROWS_DIR)))
