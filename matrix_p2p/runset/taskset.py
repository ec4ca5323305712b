"""The set of tasks one run asks for.

A run (``run``, or ``submit`` + ``sink``) means a definite set of task ids:
one per selected input row and trial, ``task_id(row key, trial)`` in the code
version's namespace. Every other id in the store (another source, a larger
``--limit``, another version) is not this run's. Attempts (``x~a2``) and
fan-out children (``x/0``, ``x~a2/0/1``) belong to the task they descend from;
replays (``x~r1``) are made by ``replay``, not by a run (source keys never
hold ``~``: ``task_id`` replaces it).

``plan`` reads the source once (lazily), checks that no id repeats and returns
the ids; ``TaskSet`` is the pure membership test the sink filters by.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from matrix_p2p.errors import ConfigError
from matrix_p2p.runtime.attempts import split_attempt
from matrix_p2p.runtime.rows import iter_rows
from matrix_p2p.runtime.source import task_id
from matrix_p2p.workflow.spec import WorkflowSpec


def root_id(task_id: str) -> str:
    """The submitted task an id descends from: ``x~a3/1/0`` -> ``x``. A replay's id
    (``x~r2``) is its own root (it is not any run's task)."""
    return split_attempt(task_id.split("/", 1)[0])[0]


class TaskSet:
    """The ids one run asked for (namespace included). Pure."""

    __slots__ = ("digest", "ids")

    def __init__(self, ids: Iterable[str]) -> None:
        self.ids: frozenset[str] = frozenset(ids)
        h = hashlib.sha256()
        for tid in sorted(self.ids):
            h.update(tid.encode())
            h.update(b"\n")
        self.digest = h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.ids

    def owns(self, task_id: str) -> bool:
        """Whether a result with this id is one of this run's tasks (an attempt or a
        fan-out descendant of one included; a replay is not)."""
        return root_id(task_id) in self.ids


class Planned:
    """What ``plan`` read: the submitted ids in source order, before the namespace."""

    __slots__ = ("keys",)

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def in_namespace(self, ns: str) -> TaskSet:
        suffix = f"~v{ns}" if ns else ""
        return TaskSet(k + suffix for k in self.keys)


def plan(spec: WorkflowSpec, limit: int | None = None) -> Planned:
    """The ids ``submit`` creates for the first ``limit`` rows, read from the source.

    Error handling: two rows with the same id are a one-line ``ConfigError``
    naming both places, raised before anything is submitted (the second row
    would otherwise be skipped as "already submitted" and the run would wait
    for it forever).
    """
    # where each key was first seen, not the row: holding every row's data would keep the
    # whole input in memory for the run (1.6 KB per Coral row: 475 MiB at 300k rows)
    first: dict[str, tuple[str, int]] = {}
    keys: list[str] = []
    for n, row in enumerate(iter_rows(spec)):
        if limit is not None and n >= limit:
            break
        seen = first.get(row.key)
        if seen is not None:
            field = f" ({spec.source.id_field})" if spec.source.id_field else ""
            raise ConfigError(
                f"{_where(spec, row.source, row.index)}: duplicate id {row.key!r}{field}, "
                f"first at {_where(spec, *seen)}: "
                "every input row needs its own id")
        first[row.key] = (row.source, row.index)
        keys.extend(task_id(row.key, trial) for trial in range(spec.trials))
    return Planned(keys)


def _where(spec: WorkflowSpec, source: str, index: int) -> str:
    """``<file> line N`` (``row N`` in a dataset or Parquet file); a source path relative
    to the workflow file is shown from there, so the user can open it."""
    dataset = source.startswith("hf:")
    unit = "row" if dataset or source.endswith(".parquet") else "line"
    path = source if dataset or Path(source).is_absolute() else str(spec.base_dir / source)
    return f"{path} {unit} {index}"
