"""The task file's schema (msgspec) and loading. Host side.

``data/tasks.jsonl`` holds one task per line::

    {"id": "retail_000", "kind": "cancel_pending",
     "user_scenario": {"persona": ..., "reason_for_call": ..., "known_info": ...,
                       "unknown_info": ..., "task_instructions": ...},
     "ending": "stop" | "transfer" | "out_of_scope",
     "expected_actions": [{"name": "find_user_id_by_email", "arguments": {...}}, ...],
     "communicate_info": ["367.53", ...]}

``ending`` is how a faithful user ends the call (``###STOP###``,
``###TRANSFER###``, ``###OUT-OF-SCOPE###``); ``expected_actions`` replayed on
a fresh database give the expected final database; every ``communicate_info``
string must appear in some assistant message (see ``reward``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import msgspec

from .retail_db import RetailDB, bundled_db_path, load_db

Ending = Literal["stop", "transfer", "out_of_scope"]


class Action(msgspec.Struct, frozen=True):
    name: str
    arguments: dict[str, Any] = {}


class UserScenario(msgspec.Struct, frozen=True):
    reason_for_call: str
    known_info: str
    persona: str = ""
    unknown_info: str = ""
    task_instructions: str = ""


class Task(msgspec.Struct, frozen=True):
    id: str
    user_scenario: UserScenario
    expected_actions: list[Action]
    communicate_info: list[str] = []
    ending: Ending = "stop"
    kind: str = ""


_task_decoder = msgspec.json.Decoder(Task)


def bundled_tasks_path() -> Path:
    return Path(__file__).resolve().parent / "data" / "tasks.jsonl"


def load_tasks(path: str | Path | None = None) -> list[Task]:
    """Every task in a JSONL file (default: the bundled one); ``msgspec.ValidationError``
    names the line's bad field."""
    text = Path(path or bundled_tasks_path()).read_text(encoding="utf-8")
    return [_task_decoder.decode(line) for line in text.splitlines() if line.strip()]


def validate_db(data: Any) -> RetailDB:
    """``data`` checked against the ``RetailDB`` schema (``msgspec.ValidationError`` names the path)."""
    return msgspec.convert(data, RetailDB)


@functools.cache
def _bundled_db_bytes() -> bytes:
    return bundled_db_path().read_bytes()


def fresh_db() -> RetailDB:
    """A new copy of the bundled database (read from disk once per process)."""
    return validate_db(msgspec.json.decode(_bundled_db_bytes()))


__all__ = [
    "Action",
    "Ending",
    "Task",
    "UserScenario",
    "bundled_tasks_path",
    "fresh_db",
    "load_db",
    "load_tasks",
    "validate_db",
]
