"""When a run is finished: every task of its set has its row, and so has every child.

Fed by the sink with each row it keeps (the latest attempt of a task, whether
written to the output or left out by ``--kept-only``). A task counts once its
latest kept attempt is at least the attempt the run waits for: attempt 1, or a
later one that ``--retry-failed`` (this run's or an interrupted earlier one's)
submitted. A row that fanned out announces its children (``<id>/<i>``), and
the run waits for each of them too. Pure and incremental: each row costs O(1)
plus its children, so a million-task run checks "finished" for free.
"""

from __future__ import annotations

from typing import Any

import msgspec

from matrix_p2p.runset.taskset import TaskSet
from matrix_p2p.runtime.attempts import split_attempt


class Counts(msgspec.Struct):
    """Done and failed among a run's tasks and among their fan-out children; rows kept
    by the workflow's filters."""

    done: int = 0
    failed: int = 0
    children_done: int = 0
    children_failed: int = 0
    kept: int = 0


class Completion:
    """Which of ``tasks`` (and their descendants) have their row."""

    def __init__(self, tasks: TaskSet) -> None:
        self.tasks = tasks
        self._latest: dict[str, tuple[int, str, bool]] = {}  # base -> (attempt, status, kept)
        self._need: dict[str, int] = {}  # base -> the attempt the run waits for (default 1)
        self._missing: set[str] = set(tasks.ids)  # bases without the row the run waits for
        self._children: set[str] = set()  # announced children's bases

    @property
    def finished(self) -> bool:
        return not self._missing

    @property
    def missing(self) -> int:
        return len(self._missing)

    @property
    def announced(self) -> int:
        return len(self._children)

    def missing_ids(self, n: int = 5) -> list[str]:
        """A few of the bases still missing, for messages."""
        return sorted(self._missing)[:n]

    def latest(self, base: str) -> tuple[int, str] | None:
        have = self._latest.get(base)
        return None if have is None else (have[0], have[1])

    def row(self, task_id: str, status: str, *, children: int = 0, kept: bool = False) -> None:
        """A row the sink keeps for ``task_id`` (only ever a later attempt than before)."""
        base, attempt = split_attempt(task_id)
        self._latest[base] = (attempt, status, kept)
        if attempt >= self._need.get(base, 1):
            self._missing.discard(base)
        for i in range(children):
            child = f"{task_id}/{i}"
            if child not in self._children:
                self._children.add(child)
                if child not in self._latest:
                    self._missing.add(child)

    def expect_attempt(self, task_id: str) -> None:
        """The run waits for this attempt (``x~a<n>``) of its task."""
        base, attempt = split_attempt(task_id)
        if attempt <= self._need.get(base, 1):
            return
        self._need[base] = attempt
        have = self._latest.get(base)
        if have is None or have[0] < attempt:
            self._missing.add(base)

    def failed_bases(self) -> list[tuple[str, int]]:
        """(base, attempt) of every kept row whose latest attempt failed."""
        return [(b, a) for b, (a, s, _) in self._latest.items() if s == "failed"]

    def counts(self) -> Counts:
        c = Counts()
        for base, (_, status, kept) in self._latest.items():
            child = base not in self.tasks.ids
            if status == "done":
                if child:
                    c.children_done += 1
                else:
                    c.done += 1
            elif child:
                c.children_failed += 1
            else:
                c.failed += 1
            c.kept += kept
        return c


class _RowHead(msgspec.Struct):
    """The fields of a row (or a kept-only side-file line) that completion needs."""

    id: str
    status: str
    children: int = 0
    result: dict[str, Any] = {}


_head_decoder = msgspec.json.Decoder(_RowHead)


def add_lines(completion: Completion, lines: list[bytes], latest: set[str], *,
              rows: bool) -> None:
    """The output's lines (``rows``) or the kept-only side file's ids to ``completion``;
    only those of ``latest`` (the latest attempts) count."""
    for ln in lines:
        try:
            head = _head_decoder.decode(ln)
        except msgspec.DecodeError:
            continue  # the sink's trust check or rebuild has dealt with the file already
        if head.id in latest:
            kept = rows and head.status == "done" and head.children == 0 \
                and head.result.get("kept") is True
            completion.row(head.id, head.status, children=head.children, kept=kept)
