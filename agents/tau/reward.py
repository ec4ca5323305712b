"""Tau2-style reward: the database the agent left, and what it told the user.

``db_match``: the expected actions replayed on a fresh database give the same
hash as the database at the end of the conversation (so read-only calls, or a
write the task did not ask for, show up only through the final state).
``communicate_match``: every ``communicate_info`` string appears in at least
one assistant message, case-insensitively, with thousands separators (``,``)
removed from the message, as tau2-bench checks. ``reward`` is their product.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import msgspec

from .retail_db import RetailDB, db_hash
from .retail_tools import call_tool
from .tasks import Task


class Reward(msgspec.Struct, frozen=True):
    reward: float
    db_match: bool
    communicate_match: bool
    expected_db_hash: str
    missing_info: list[str] = []  # communicate_info strings never said
    replay_errors: list[str] = []  # expected actions that failed on replay (a broken task)


def expected_db(task: Task, initial_db: RetailDB) -> tuple[RetailDB, list[str]]:
    """``initial_db`` (not mutated) after the task's expected actions, and any replay errors."""
    db = copy.deepcopy(initial_db)
    errors = []
    for action in task.expected_actions:
        out = call_tool(db, action.name, dict(action.arguments))
        if out.startswith("Error:"):
            errors.append(f"{action.name}: {out}")
    return db, errors


def communicated(info: Sequence[str], assistant_messages: Sequence[str]) -> list[str]:
    """The ``info`` strings that no assistant message contains."""
    said = [m.lower().replace(",", "") for m in assistant_messages]
    return [s for s in info if not any(s.lower() in m for m in said)]


def evaluate(
    task: Task,
    *,
    initial_db: RetailDB,
    assistant_messages: Sequence[str],
    final_db: RetailDB | None = None,
    final_db_hash: str | None = None,
) -> Reward:
    """Score one finished conversation; give ``final_db`` or its ``final_db_hash``
    (what ``env hash`` prints in the sandbox). Pure: nothing is read or written."""
    if (final_db is None) == (final_db_hash is None):
        raise ValueError("give exactly one of final_db and final_db_hash")
    gold, errors = expected_db(task, initial_db)
    gold_hash = db_hash(gold)
    got_hash = final_db_hash if final_db is None else db_hash(final_db)
    missing = communicated(task.communicate_info, assistant_messages)
    db_match, communicate_match = got_hash == gold_hash, not missing
    return Reward(
        reward=float(db_match and communicate_match),
        db_match=db_match,
        communicate_match=communicate_match,
        expected_db_hash=gold_hash,
        missing_info=missing,
        replay_errors=errors,
    )
