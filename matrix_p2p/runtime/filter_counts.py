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

    def line(self) -> str:
        """``kept 120, filtered 380 (langid 200, quality 180), failed 0``; empty when
        no task carried a filter status (a workflow without filters)."""
        if not self.kept and not self.filtered:
            return ""
        by = ", ".join(f"{k} {n}" for k, n in sorted(self.filtered.items(), key=lambda kv: -kv[1]))
        total = sum(self.filtered.values())
        return (f"kept {self.kept}, filtered {total}" + (f" ({by})" if by else "")
                + (f", fanned out {self.fanned_out}" if self.fanned_out else "")
                + f", failed {self.failed}")
