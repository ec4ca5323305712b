"""Preference pairs from the trials of one input row. Pure.

Rows are trials of the same row when they share ``source``, ``row_index`` and the
fan-out child they are (``/0``: the first question of a document); they differ by
``trial``. Each row is scored by the ``--by`` expression (a number; ``true`` is 1,
``false`` 0). The best-scored trial is chosen and the worst rejected, one pair per
row, ties broken by the lower trial; every other row is counted with the reason it
is in no pair.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from matrix_p2p.export.expr import Expr
from matrix_p2p.export.views import Message, Skip

GroupKey = tuple[str, int, str]


@dataclass(frozen=True)
class Scored:
    """One row with its conversation and score."""

    row_id: str
    trial: int
    score: float
    msgs: list[Message]


@dataclass(frozen=True)
class Pair:
    chosen: Scored
    rejected: Scored


def group_key(row: Mapping[str, Any]) -> GroupKey:
    """The input row a task ran (its trials share it): source, row index, child path."""
    row_id = str(row.get("id", ""))
    child = row_id.split("/", 1)[1] if "/" in row_id else ""
    index = row.get("row_index")
    return str(row.get("source") or ""), index if isinstance(index, int) else -1, child


def score(row: Mapping[str, Any], by: Expr) -> float:
    """The row's score by ``by``. Raises ``Skip`` when it has none."""
    value = by.value(row)
    if value is None:
        raise Skip(f"no score ({by.text} is missing)")
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    raise Skip(f"no score ({by.text} is not a number or true/false)")


def pick(trials: list[Scored]) -> tuple[Pair, list[Scored]]:
    """The pair of a row's trials and the trials left out of it. Raises ``Skip`` (for
    every trial) when there is none."""
    if len(trials) < 2:
        raise Skip("only one trial of its row")
    best = min(trials, key=lambda s: (-s.score, s.trial, s.row_id))
    worst = min(trials, key=lambda s: (s.score, s.trial, s.row_id))
    if best.score == worst.score:
        raise Skip("its row's trials scored the same")
    rest = [s for s in trials if s is not best and s is not worst]
    return Pair(chosen=best, rejected=worst), rest
