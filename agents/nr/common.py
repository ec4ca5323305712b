"""What every NaturalReasoning agent does with a task: read its document, keep or drop it."""

from __future__ import annotations

from typing import Any

from matrix_p2p.envelope import Task
from matrix_p2p.errors import FailTask


def document(task: Task, field: str = "text") -> str:
    """The row's document text; a row without one fails the task with the reason."""
    value: Any = task.row.get(field)
    if value is None:
        raise FailTask(f"input row has no {field!r} field")
    if not isinstance(value, str):
        raise FailTask(f"input row's {field!r} is {type(value).__name__}, not a string")
    return value


def drop(task: Task, reason: str) -> None:
    """Filtered: the task ends as done with ``kept: false`` and the reason."""
    task.state["kept"] = False
    task.state["filter_reason"] = reason


def keep(task: Task) -> None:
    task.state["kept"] = True
    task.state["filter_reason"] = None
