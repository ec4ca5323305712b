"""Input rows, streamed: JSONL, JSONL.zst, Parquet, globs of them, or a Hugging Face dataset.

Every reader is lazy (one line, one Parquet batch or one streamed dataset row
at a time), so a source of millions of rows is read in constant memory. A row
that is not valid JSON (or not an object, or lacks the ``id_field``) is not
dropped: it comes out with ``error`` set and ``submit`` records it as a failed
task, with the file and line in its error.

``with_source`` is the ``--source PATH|GLOB|hf:NAME[:SPLIT]`` override of ``run`` and
``submit``.
"""

from __future__ import annotations

import glob
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import msgspec

from matrix_p2p.errors import ConfigError
from matrix_p2p.workflow.spec import HFSource, SourceSpec, WorkflowSpec

PARQUET_BATCH = 1024  # rows decoded at a time from a Parquet file


class Row(msgspec.Struct, frozen=True):
    source: str  # as the workflow gives it (relative stays relative)
    index: int  # line number (files) or position (datasets): seeds and messages
    key: str
    data: dict[str, Any] | None
    error: str | None = None
    row_index: int = 0  # from 0: the row's place in its source, as dataset tools count


def with_source(spec: WorkflowSpec, override: str | None) -> WorkflowSpec:
    """``spec`` reading ``override`` instead of its own source (None: unchanged).

    ``hf:NAME`` or ``hf:NAME:SPLIT`` is a Hugging Face dataset; anything else a
    path or glob, relative to the current directory (the workflow's own
    ``source.path`` is relative to the workflow file). ``id_field`` is kept.
    """
    if override is None:
        return spec
    if override.startswith("hf:"):
        name, _, split = override[3:].partition(":")
        if not name:
            raise ConfigError(f"--source {override!r}: no dataset name after 'hf:'")
        src = SourceSpec(hf=HFSource(dataset=name, split=split or "train"),
                         id_field=spec.source.id_field)
    else:
        src = SourceSpec(path=os.path.abspath(override), id_field=spec.source.id_field)
    return msgspec.structs.replace(spec, source=src)


def source_files(spec: WorkflowSpec) -> list[Path]:
    if spec.source.path is None:
        raise ConfigError(f"{spec.path}: source: no `path` given")
    pattern = spec.source.path
    if not Path(pattern).is_absolute():
        pattern = str(spec.base_dir / pattern)
    files = sorted(Path(p) for p in glob.glob(pattern))
    if not files:
        raise ConfigError(f"{spec.path}: source.path: no file matches {spec.source.path!r}")
    return files


def iter_rows(spec: WorkflowSpec) -> Iterator[Row]:
    """Rows in a stable order (files sorted by name), read lazily."""
    if spec.source.hf is not None:
        yield from _iter_hf(spec)
        return
    relative = not Path(spec.source.path or "").is_absolute()
    for path in source_files(spec):
        # the source as the workflow names it: a relative path stays relative to the file
        name = os.path.relpath(path, spec.base_dir) if relative else str(path)
        if path.name.endswith(".parquet"):
            yield from _keyed(spec, path, name, _parquet_records(spec, path))
        else:
            yield from _keyed(spec, path, name, _json_lines(path))


def _json_lines(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, decoded value, error) per non-blank line of a JSONL(.zst) file."""
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield lineno, None, f"{path}:{lineno}: not valid JSON: {exc.msg}"


def _open_text(path: Path) -> IO[str]:
    if path.suffix != ".zst":
        return path.open("r", encoding="utf-8", errors="replace")
    import zstandard

    raw = path.open("rb")
    try:
        stream = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
    except BaseException:
        raw.close()
        raise
    return io.TextIOWrapper(stream, encoding="utf-8", errors="replace")


def _parquet_records(spec: WorkflowSpec, path: Path) -> Iterator[tuple[int, Any, str | None]]:
    try:
        import pyarrow.parquet as pq  # optional extra: matrix_p2p[parquet]
    except ImportError:
        raise ConfigError(f"{spec.path}: source {path.name}: reading Parquet needs pyarrow "
                          "(pip install 'matrix_p2p[parquet]')") from None
    index = 0
    with pq.ParquetFile(path) as pf:
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH):
            for record in batch.to_pylist():
                index += 1
                yield index, record, None


def _keyed(spec: WorkflowSpec, path: Path, name: str,
           records: Iterable[tuple[int, Any, str | None]]) -> Iterator[Row]:
    """Rows with their keys: the ``id_field``, else ``<file stem>-<line or row number>``
    (numbers from 1; ``row_index`` from 0)."""
    id_field = spec.source.id_field
    stem = Path(path.stem).stem if path.suffix == ".zst" else path.stem
    for index, data, error in records:
        default_key = f"{stem}-{index}"
        ri = index - 1
        if error is not None:
            yield Row(name, index, default_key, None, error=error, row_index=ri)
        elif not isinstance(data, dict):
            yield Row(name, index, default_key, None, row_index=ri,
                      error=f"{path}:{index}: expected a JSON object, got {type(data).__name__}")
        elif id_field is not None and id_field not in data:
            yield Row(name, index, default_key, data, row_index=ri,
                      error=f"{path}:{index}: no {id_field!r} field (source.id_field)")
        else:
            key = str(data[id_field]) if id_field is not None else default_key
            yield Row(name, index, key, data, row_index=ri)


def _iter_hf(spec: WorkflowSpec) -> Iterator[Row]:
    hf = spec.source.hf
    assert hf is not None
    try:
        import datasets  # optional extra: matrix_p2p[hf]
    except ImportError:
        raise ConfigError(
            f"{spec.path}: source.hf needs the 'datasets' package (pip install 'matrix_p2p[hf]')"
        ) from None
    ds = datasets.load_dataset(hf.dataset, hf.config, split=hf.split, streaming=True)
    name = f"hf:{hf.dataset}/{hf.split}"
    for i, data in enumerate(ds):
        key = str(data[spec.source.id_field]) if spec.source.id_field else f"{hf.split}-{i}"
        yield Row(name, i, key, dict(data), row_index=i)
