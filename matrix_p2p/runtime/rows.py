"""Input rows, streamed: JSONL, JSONL.zst, Parquet, CSV, TSV, globs of them, or a Hugging
Face dataset.

Every reader is lazy (one line, one Parquet batch or one streamed dataset row
at a time), so a source of millions of rows is read in constant memory. A row
that is not valid JSON (or not an object, or lacks the ``id_field``) is not
dropped: it comes out with ``error`` set and ``submit`` records it as a failed
task, with the file and line in its error. The format is the file's extension
(``FORMATS``); a file of any other is a one-line ``ConfigError`` before any row
is read. A CSV or TSV file starts with a header row; each row is a dict of strings
(its cells by column name), numbered by its line in the file as JSON lines are.

``with_source`` is the ``--source PATH|GLOB|hf:NAME[:SPLIT]`` override of ``run`` and
``submit``.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import msgspec

from matrix_p2p.errors import ConfigError
from matrix_p2p.workflow.spec import HFSource, SourceSpec, WorkflowSpec

PARQUET_BATCH = 1024  # rows decoded at a time from a Parquet file
FORMATS = (".jsonl", ".jsonl.zst", ".parquet", ".csv", ".tsv")  # source file extensions

# what a file reader yields per row: its number (line or row, from 1), its row_index
# (from 0), the decoded value, and the error that makes it a failed row
Record = tuple[int, int, Any, str | None]


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


def check_source(spec: WorkflowSpec) -> None:
    """The source's files exist and each has a supported format (a one-line
    ``ConfigError`` otherwise): for commands to call before they touch a broker."""
    if spec.source.hf is None:
        source_files(spec)


def source_files(spec: WorkflowSpec) -> list[Path]:
    if spec.source.path is None:
        raise ConfigError(f"{spec.path}: source: no `path` given")
    pattern = spec.source.path
    if not Path(pattern).is_absolute():
        pattern = str(spec.base_dir / pattern)
    files = sorted(Path(p) for p in glob.glob(pattern))
    if not files:
        raise ConfigError(f"{spec.path}: source.path: no file matches {spec.source.path!r}")
    for path in files:  # all of them now: not after the first file's rows were submitted
        _format(path)
    return files


def _format(path: Path) -> str:
    """The source format of ``path`` by its extension; a one-line ``ConfigError`` if
    none is supported (read as JSON lines, a CSV file became one failed row per line)."""
    found = next((ext for ext in FORMATS if path.name.endswith(ext)), None)
    if found is not None:
        return found
    hint = ""
    if path.suffix == ".json":  # a JSON array cannot be read lazily: one object a line can
        hint = "; a JSON array of objects: write one object per line as .jsonl " \
               "(jq -c '.[]' in.json > in.jsonl)"
    what = f"unsupported source format {path.suffix!r}" if path.suffix else \
        "no extension names its format"
    raise ConfigError(f"source {path}: {what} (supported: {', '.join(FORMATS)}){hint}")


def iter_rows(spec: WorkflowSpec) -> Iterator[Row]:
    """Rows in a stable order (files sorted by name), read lazily."""
    if spec.source.hf is not None:
        yield from _iter_hf(spec)
        return
    relative = not Path(spec.source.path or "").is_absolute()
    for path in source_files(spec):
        # the source as the workflow names it: a relative path stays relative to the file
        name = os.path.relpath(path, spec.base_dir) if relative else str(path)
        fmt = _format(path)
        if fmt == ".parquet":
            yield from _keyed(spec, path, name, _parquet_records(spec, path))
        elif fmt in (".csv", ".tsv"):
            sep = "\t" if fmt == ".tsv" else ","
            yield from _keyed(spec, path, name, _csv_records(path, sep, spec.source.id_field))
        else:
            yield from _keyed(spec, path, name, _json_lines(path))


def _json_lines(path: Path) -> Iterator[Record]:
    """A record per non-blank line of a JSONL(.zst) file, numbered by its line."""
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, lineno - 1, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield lineno, lineno - 1, None, f"{path}:{lineno}: not valid JSON: {exc.msg}"


def _csv_records(path: Path, delimiter: str, id_field: str | None) -> Iterator[Record]:
    """A record ({column: cell}) per row of a CSV or TSV file with a header row.

    A row is numbered by the line it starts on, the header being line 1 (as JSON lines
    are numbered by theirs); its ``row_index`` counts the rows from 0, as dataset tools
    do. A row with more or fewer cells than the header has columns is a failed row; a
    header without the ``id_field`` column is a ``ConfigError`` (every row would fail)."""
    # a long document in one cell is ordinary here; the default limit (128 KiB) would end
    # the file at it (the limit is per process: raised, never lowered)
    csv.field_size_limit(max(csv.field_size_limit(), min(sys.maxsize, 2**31 - 1)))
    with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                return  # an empty file: no rows
            _check_header(path, header, id_field)
            start, row_index = reader.line_num + 1, 0
            for cells in reader:
                lineno, start = start, reader.line_num + 1
                if not cells:
                    continue  # a blank line
                if len(cells) != len(header):
                    yield lineno, row_index, None, (
                        f"{path}:{lineno}: {len(cells)} cells, the header row has "
                        f"{len(header)} columns")
                else:
                    yield lineno, row_index, dict(zip(header, cells, strict=True)), None
                row_index += 1
        except csv.Error as exc:  # the reader cannot go on past this (a stray NUL byte)
            raise ConfigError(f"{path}:{reader.line_num}: not valid CSV: {exc}") from None


def _check_header(path: Path, header: list[str], id_field: str | None) -> None:
    twice = sorted({c for c in header if header.count(c) > 1})
    if not header:
        raise ConfigError(f"{path}:1: not a header row (CSV and TSV sources start with one "
                          "naming the columns)")
    if "" in header or twice:
        what = f"names {', '.join(map(repr, twice))} twice" if twice else "has an unnamed column"
        raise ConfigError(f"{path}:1: the header row {what}")
    if id_field is not None and id_field not in header:
        raise ConfigError(f"{path}:1: no {id_field!r} column in the header row "
                          f"(source.id_field); its columns: {', '.join(header)}")


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


def _parquet_records(spec: WorkflowSpec, path: Path) -> Iterator[Record]:
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
                yield index, index - 1, record, None


def _keyed(spec: WorkflowSpec, path: Path, name: str,
           records: Iterable[Record]) -> Iterator[Row]:
    """Rows with their keys: the ``id_field``, else ``<file stem>-<line or row number>``
    (numbers from 1; ``row_index`` from 0)."""
    id_field = spec.source.id_field
    stem = Path(path.stem).stem if path.suffix == ".zst" else path.stem
    for index, ri, data, error in records:
        default_key = f"{stem}-{index}"
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
