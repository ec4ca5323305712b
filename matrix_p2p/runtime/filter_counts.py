"""Filter statuses of finished tasks, for run summaries of document pipelines.

A filtering workflow ends every task as done with ``result.kept`` true or false,
and a dropped one names why in ``result.filter_reason``; these counts say how
many were kept, how many each filter dropped, and how many failed.
"""

from __future__ import annotations

import msgspec

from matrix_p2p.envelope import Task


class FilterCounts(msgspec.Struct):
    kept: int = 0
    failed: int = 0
    fanned_out: int = 0  # parents whose children are the rows
    filtered: dict[str, int] = msgspec.field(default_factory=dict)  # by filter_reason

    def add(self, task: Task) -> None:
        if task.status != "done":
            self.failed += 1
        elif "children" in task.state:
            self.fanned_out += 1
        elif task.state.get("kept") is True:
            self.kept += 1
        elif "kept" in task.state:
            why = str(task.state.get("filter_reason") or "unknown")
            self.filtered[why] = self.filtered.get(why, 0) + 1

    def report(self) -> FilterReport | None:
        """The counts as ``summary.json`` holds them; None when no task carried a filter
        status (a workflow without filters)."""
        if not self.kept and not self.filtered:
            return None
        return FilterReport(
            kept=self.kept, filtered=sum(self.filtered.values()),
            by_reason=dict(sorted(self.filtered.items(), key=lambda kv: (-kv[1], kv[0]))),
            fanned_out=self.fanned_out, failed=self.failed)

    def line(self) -> str:
        """``kept 120, filtered 380 (langid 200, quality 180), failed 0``; empty when
        no task carried a filter status."""
        r = self.report()
        return r.line() if r is not None else ""


class FilterReport(msgspec.Struct, kw_only=True):
    """``summary.json``'s ``filters``: tasks kept, dropped (in all, and by the filter that
    dropped them, most first), fan-out parents and failed tasks."""

    kept: int
    filtered: int
    by_reason: dict[str, int]
    fanned_out: int
    failed: int

    def line(self) -> str:
        by = ", ".join(f"{k} {n}" for k, n in self.by_reason.items())
        return (f"kept {self.kept}, filtered {self.filtered}" + (f" ({by})" if by else "")
                + (f", fanned out {self.fanned_out}" if self.fanned_out else "")
                + f", failed {self.failed}")
