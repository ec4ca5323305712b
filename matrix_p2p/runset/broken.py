"""When a run is clearly broken: most of its first finished tasks failed the same way. Pure.

An agent bug, a prompt the model cannot answer, a tool that is not installed:
every task then fails with the same error, and running the whole dataset only
turns it into failed rows. The rule (``limits.abort_on_failures`` in the
workflow, ``{first: 20, share: 0.8}`` by default): among the first ``first``
tasks that finish in a run, once ``ceil(share * first)`` have failed with the
same reason, the run is broken. Reasons are compared with numbers, hex ids and
UUIDs taken out (``normalise``), so "row 17: timeout after 30s" and "row 4:
timeout after 31s" are one reason. After ``first`` finished tasks without
tripping, the rule is spent: failures later in a run, or a few failures among
many successes, never stop it. ``run`` stops its workers when it trips and
leaves the unfinished tasks in the store for the next run.

Usage::

    broken = BrokenRun.from_limit(spec.limits.abort_on_failures)
    reason = broken.observe(task.status, task.error)   # per finished task; the reason once tripped
"""

from __future__ import annotations

import math
import re

from matrix_p2p.workflow.spec import AbortOnFailures

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = re.compile(r"\b0x[0-9a-fA-F]+\b|\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}\b")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_SPACE = re.compile(r"\s+")
SHOWN_CHARS = 200  # of the first error's text in the reason


def normalise(error: str) -> str:
    """The reason of an error, without what differs from task to task: UUIDs, hex ids
    and numbers become ``#``, runs of whitespace one space."""
    text = _UUID.sub("#", error)
    text = _HEX.sub("#", text)
    text = _NUMBER.sub("#", text)
    return _SPACE.sub(" ", text).strip()


class BrokenRun:
    """Counts the first ``first`` finished tasks of a run by failure reason. ``first`` 0:
    never trips."""

    def __init__(self, first: int, share: float) -> None:
        self.first = first
        self.threshold = max(1, math.ceil(share * first - 1e-9))
        self.seen = 0  # finished tasks counted (at most ``first``)
        self._by_reason: dict[str, int] = {}
        self._example: dict[str, str] = {}  # reason -> the first error's text
        self.tripped: str | None = None

    @classmethod
    def from_limit(cls, rule: AbortOnFailures | int | None) -> BrokenRun:
        """From the workflow's ``limits.abort_on_failures`` (0 or None: never trips)."""
        if isinstance(rule, AbortOnFailures):
            return cls(rule.first, rule.share)
        return cls(0, 1.0)

    def observe(self, status: str, error: str | None) -> str | None:
        """One finished task (``done`` or ``failed``, with its error). Returns why the run
        is broken once it is (and on every later call), else None."""
        if self.tripped is not None or self.seen >= self.first:
            return self.tripped
        self.seen += 1
        if status != "failed":
            return None
        text = " ".join((error or "(no error text)").split())
        reason = normalise(text)
        n = self._by_reason.get(reason, 0) + 1
        self._by_reason[reason] = n
        self._example.setdefault(reason, text)
        if n >= self.threshold:
            example = self._example[reason]
            if len(example) > SHOWN_CHARS:
                example = example[:SHOWN_CHARS - 3] + "..."
            self.tripped = f'{n} of the first {self.seen} tasks failed with "{example}"'
        return self.tripped


def stopped_message(reason: str) -> str:
    """The one line ``run`` ends with (after ``matrix_p2p: error: ``) when it stopped."""
    return (f"stopped: {reason}: fix it, then re-run with --retry-failed (the unfinished "
            "tasks stay in the store)")
