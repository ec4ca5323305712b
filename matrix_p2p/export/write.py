"""Writing a plan's examples: one file per split, or a dataset directory.

- ``FILE.jsonl`` / ``FILE.jsonl.zst`` / ``FILE.parquet``: one file per split; with
  several splits the name holds ``{split}`` (``out/coral-{split}.jsonl``).
- ``DIR``: Parquet shards ``DIR/data/<split>-00000-of-0000N.parquet`` of at most
  ``rows_per_shard`` examples (an empty split: one empty shard), one schema for all,
  and the dataset card ``DIR/README.md``. ``datasets.load_dataset(DIR)`` reads it.

Files are replaced atomically (``runtime/files.replace_file``); a directory is built
beside the target and renamed into place. An existing target is replaced only with
``overwrite``, and a directory only if an earlier export made it (a card and Parquet
shards, nothing else): never a folder of other things.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from matrix_p2p.errors import ConfigError
from matrix_p2p.export import card
from matrix_p2p.export.plan import Plan
from matrix_p2p.runtime.files import format_of, replace_file

_encode = msgspec.json.Encoder()


@dataclass(frozen=True)
class Target:
    path: Path
    kind: str  # "dir", or a file format: jsonl, jsonl.zst, parquet


def target_of(to: Path, split_names: list[str], inputs: list[Path], *, overwrite: bool) -> Target:
    """Where ``--to`` says to write; a one-line ``ConfigError`` for a name of another
    format, several splits into one file, an input as output, or an existing target
    without ``overwrite``."""
    fmt = format_of(to)
    if fmt is None and to.suffix and not to.is_dir():
        raise ConfigError(f"--to {to}: unsupported format {to.suffix!r} (give a directory, a new "
                          "one named without an extension, or a .jsonl, .jsonl.zst or .parquet "
                          "file)")
    kind = fmt or "dir"
    paths = [to] if kind == "dir" else [file_for(to, s) for s in split_names]
    if kind != "dir" and len(split_names) > 1 and "{split}" not in to.name:
        raise ConfigError(f"--to {to}: several splits need {{split}} in the file name "
                          f"(like {to.parent / ('x-{split}' + to.name[len(to.stem):])}) or a "
                          "directory")
    resolved = {p.resolve() for p in inputs}
    for p in paths:
        if p.resolve() in resolved:
            raise ConfigError(f"--to {p}: is an input: export would overwrite its rows")
        if kind != "dir" and p.exists() and not overwrite:
            raise ConfigError(f"--to {p}: exists (give --overwrite to replace it)")
    if kind == "dir" and to.exists():
        if not to.is_dir():
            raise ConfigError(f"--to {to}: is a file, not a directory")
        if any(to.iterdir()):
            if not _is_export(to):
                raise ConfigError(f"--to {to}: holds other things than an earlier export; "
                                  "choose another directory")
            if not overwrite:
                raise ConfigError(f"--to {to}: holds an earlier export (give --overwrite to "
                                  "replace it)")
    return Target(to, kind)


def file_for(to: Path, split: str) -> Path:
    return to.with_name(to.name.replace("{split}", split))


def _is_export(d: Path) -> bool:
    for entry in d.iterdir():
        if entry.name == "README.md" and entry.is_file():
            continue
        if entry.name == "data" and entry.is_dir() and all(
                f.is_file() and f.suffix == ".parquet" for f in entry.iterdir()):
            continue
        return False
    return True


def write(plan: Plan, target: Target, prov: card.Provenance, *, rows_per_shard: int) -> list[Path]:
    """Write the examples; returns the files written."""
    if target.kind in ("jsonl", "jsonl.zst"):
        out = []
        for name, _ in plan.splits:
            path = file_for(target.path, name)
            replace_file(path, [_encode.encode(e) + b"\n" for e in plan.examples[name]], target.kind)
            out.append(path)
        return out
    pa, pq = _pyarrow(target.path)
    schema = _schema(pa, plan)
    if target.kind == "parquet":
        out = []
        for name, _ in plan.splits:
            path = file_for(target.path, name)
            replace_file(path, [_parquet_bytes(pa, pq, plan.examples[name], schema)], "parquet")
            out.append(path)
        return out
    return _write_dir(plan, target.path, prov, rows_per_shard, pa, pq, schema)


def _pyarrow(where: Path) -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"--to {where}: Parquet needs 'pyarrow' (pip install "
                          "'matrix_p2p[parquet]')") from None
    return pa, pq


def _columns(example: dict[str, Any]) -> dict[str, Any]:
    # tools' schemas differ tool by tool: as structs they would be the union of every
    # parameter of every tool; a JSON text, as Hugging Face's tool datasets keep them
    if "tools" in example:
        return {**example, "tools": _encode.encode(example["tools"]).decode()}
    return example


def _schema(pa: Any, plan: Plan) -> Any:
    """One schema for every shard: inferred over all examples (a shard without tool
    calls must still have the column, or the shards would not load together)."""
    every = [_columns(e) for name, _ in plan.splits for e in plan.examples[name]]
    return pa.Table.from_pylist(every).schema


def _parquet_bytes(pa: Any, pq: Any, examples: list[dict[str, Any]], schema: Any) -> bytes:
    table = pa.Table.from_pylist([_columns(e) for e in examples], schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _write_dir(plan: Plan, to: Path, prov: card.Provenance, rows_per_shard: int, pa: Any,
               pq: Any, schema: Any) -> list[Path]:
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = to.with_name(f".{to.name}.{secrets.token_hex(6)}.tmp")
    (tmp / "data").mkdir(parents=True)
    written: list[str] = []
    shards: dict[str, int] = {}
    try:
        for name, _ in plan.splits:
            examples = plan.examples[name]
            n = max(1, -(-len(examples) // rows_per_shard))
            shards[name] = n
            for i in range(n):
                rel = f"data/{name}-{i:05d}-of-{n:05d}.parquet"
                part = examples[i * rows_per_shard:(i + 1) * rows_per_shard]
                _write_file(tmp / rel, _parquet_bytes(pa, pq, part, schema))
                written.append(rel)
        columns = [(f.name, _type_text(pa, f.type)) for f in schema]
        text = card.render(plan, prov, shards, columns)
        _write_file(tmp / "README.md", text.encode())
        written.append("README.md")
        _swap(tmp, to)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [to / rel for rel in written]


def _type_text(pa: Any, t: Any) -> str:
    """A column's type as people read it: ``[{role: string, content: string}]``."""
    if pa.types.is_struct(t):
        return "{" + ", ".join(f"{f.name}: {_type_text(pa, f.type)}" for f in t) + "}"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"[{_type_text(pa, t.value_type)}]"
    return str(t)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _swap(tmp: Path, to: Path) -> None:
    """``tmp`` becomes ``to``; an earlier export there is removed once it is replaced."""
    if not to.exists():
        tmp.rename(to)
        return
    old = to.with_name(f".{to.name}.{secrets.token_hex(6)}.old")
    to.rename(old)
    try:
        tmp.rename(to)
    except BaseException:
        old.rename(to)
        raise
    shutil.rmtree(old)
