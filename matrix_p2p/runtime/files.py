"""Dataset files: JSON lines, zstd-compressed JSON lines, Parquet. Appends are made
durable (fsync) by ``commit``; a torn last line from a crash is cut off on reading.
Whole-file writes go through a temporary file of a unique name and a rename. An
output has one writer at a time (``OutputLock``)."""

from __future__ import annotations

import fcntl
import io
import json
import os
import secrets
from collections.abc import Callable
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

    @property
    def good_length(self) -> int:
        """Bytes of the file that hold committed rows."""
        return self._raw.tell()

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
    """``out`` from the JSON lines in ``jsonl``, atomically (temp file and rename)."""
    try:
        import pyarrow.json as pj
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("sink format parquet needs 'pyarrow' (pip install 'matrix_p2p[sinks]')"
                          ) from None
    if jsonl.exists() and jsonl.stat().st_size:
        table = pj.read_json(str(jsonl))
        _write_atomically(out, lambda fh: pq.write_table(table, fh))


# ---------------------------------------------------------------- format and atomic files
EXTENSIONS = {".jsonl": "jsonl", ".jsonl.zst": "jsonl.zst", ".parquet": "parquet"}
SUFFIX = {fmt: ext for ext, fmt in EXTENSIONS.items()}
SUPPORTED = ", ".join(EXTENSIONS)


def format_of(out: Path) -> str | None:
    """The dataset format an output's name says (``.jsonl``, ``.jsonl.zst``, ``.parquet``)."""
    return next((fmt for ext, fmt in EXTENSIONS.items() if out.name.endswith(ext)), None)


def out_format(out: Path) -> str:
    """The dataset format of an output the user named (``--out``): its extension decides.
    Any other name is a one-line ``ConfigError`` (writing JSON lines into ``x.csv``
    would hand the user a file that is not what its name says)."""
    fmt = format_of(out)
    if fmt is None:
        raise ConfigError(f"--out {out}: {_unsupported(out)}")
    return fmt


def _unsupported(out: Path) -> str:
    ext = "".join(out.suffixes[-2:]) if out.suffix == ".zst" else out.suffix
    said = f"unsupported output format {ext!r}" if ext else "no extension names its format"
    return f"{said} (supported: {SUPPORTED})"


def default_out(spec: Any) -> Path:
    """The output when no ``--out`` is given: the workflow's ``sink.path`` (with
    ``sink.format``'s extension if the path is the default one). A ``sink.path`` whose
    extension is not a format, or contradicts ``sink.format``, is a one-line
    ``ConfigError``."""
    declared: str | None = spec.sink.format
    out = Path(spec.sink.path.format(workflow=spec.name))
    if declared and spec.sink.path == type(spec.sink)().path:
        return out.with_name(out.name.removesuffix(".jsonl") + SUFFIX[declared])
    by_ext = format_of(out)
    if by_ext is None:
        raise ConfigError(f"{spec.path}: sink.path {spec.sink.path!r}: {_unsupported(out)}")
    if declared and by_ext != declared:
        raise ConfigError(
            f"{spec.path}: sink.path {spec.sink.path!r} says {by_ext} but sink.format says "
            f"{declared}: make them agree (or give --out)")
    return out


def staging_path(out: Path, fmt: str) -> Path:
    """Where rows are appended: the output itself, or (parquet, not appendable) a JSON
    lines file next to it that becomes the Parquet file at close."""
    return out.with_name(out.name + ".mx.jsonl") if fmt == "parquet" else out


def check_writable(out: Path) -> None:
    """A one-line ``ConfigError`` now rather than a failure in the middle of a run."""
    existed = out.exists()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "ab"):
            pass
        if not existed:
            out.unlink()  # a probe: an empty file here would look like a damaged output
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write: {exc.strerror or exc}") from None


def read_lines(path: Path, fmt: str) -> list[bytes]:
    """The complete JSON lines of a staging file (plain or zstd)."""
    return _read_lines(path, "jsonl.zst" if fmt == "jsonl.zst" else "jsonl")[0] \
        if path.exists() else []


def replace_file(path: Path, lines: list[bytes], fmt: str) -> int:
    """Write ``lines`` to ``path`` atomically (temp file, fsync, rename). Returns its size."""
    data = b"".join(lines)
    if fmt == "jsonl.zst" and data:
        data = _import_zstd().ZstdCompressor().compress(data)
    _write_atomically(path, lambda fh: fh.write(data))
    return len(data)


def _write_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """``path`` as ``write`` makes it, or unchanged: a temporary file of a unique name in
    the same directory (two writers never share one), fsynced, then renamed over it.
    The temporary file is removed if anything fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            # not mkstemp: its 0600 would make the dataset unreadable to the group;
            # O_EXCL makes the name ours alone, and 0666 honours the umask
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        break
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def truncate_to(path: Path, good_length: int) -> None:
    """Cut what a crash left after the last committed write (a torn row or frame)."""
    if path.exists() and path.stat().st_size > good_length:
        log.warning("sink.truncated_torn_tail", path=str(path),
                    bytes=path.stat().st_size - good_length)
        with path.open("r+b") as fh:
            fh.truncate(good_length)



# ---------------------------------------------------------------- one writer per output
class OutputLock:
    """One writer per output file: an exclusive ``flock`` on ``<out>.mx.lock``, held by a
    sink from before it opens (or rebuilds) the output until it closes it. Two writers
    appending to one file would double its rows, and a rebuild by one would drop the
    other's. The lock covers every file of the output (Parquet: the staging file too).

    The OS drops an ``flock`` when its holder dies, however it dies, so a crash never
    leaves the output locked; the lock file itself stays (removing it would let a
    writer lock a file the next one no longer sees). It holds the holder's pid, for
    the error the next writer gets.
    """

    def __init__(self, out: Path, fmt: str) -> None:
        self.out = out
        self.path = out.with_name(out.name + ".mx.lock")
        self.staging = staging_path(out, fmt)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the output (nothing if held already), then check that it can be written;
        a one-line ``ConfigError`` if another writer holds it or it cannot be written."""
        if self._fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"--out {self.out}: cannot write: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"--out {self.out}: is being written by another sink (pid "
                              f"{holder}); stop it first or write to another file") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        try:
            check_writable(self.staging)  # under the lock: the probe touches the file
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
