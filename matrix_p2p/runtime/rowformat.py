"""The dataset row of a finished task: what a sink writes for it, and the ``--kept-only``
test with the side-file line written instead for a task it leaves out."""

from __future__ import annotations

from typing import Any

import msgspec

from matrix_p2p.envelope import Task, Usage
from matrix_p2p.runtime.hop import own_turns

row_encoder = msgspec.json.Encoder()


def to_row(task: Task) -> dict[str, Any]:
    """The dataset row of a finished task. Each token is counted in one row: a replay's
    and a fan-out child's usage, hops and timings count only their own turns (those
    before are in the original's or the parent's row; ``hop.own_turns``)."""
    from_turn, from_hop = own_turns(task)
    own = task.turns[from_turn:]
    by_role: dict[str, float] = {}
    for t in own:
        by_role[t.role] = round(by_role.get(t.role, 0.0) + t.elapsed_s, 6)
    usage = {r: msgspec.structs.asdict(u)
             for r, u in msgspec.structs.replace(task, turns=own).usage_by_role().items()}
    usage["total"] = msgspec.structs.asdict(sum((t.usage for t in own), Usage()))
    finished = task.finished_at or 0.0
    return {
        "id": task.id,
        "workflow": task.workflow,
        "workflow_version": task.workflow_version,
        "code_version": task.code_version,
        "status": task.status,
        "error": task.error,
        "source": task.source,
        "row_index": task.row_index,
        "trial": task.trial,
        "input": task.row,
        "result": task.state,
        "dialogue": [
            {
                "role": t.role,
                "content": t.content,
                "hop": t.hop,
                "usage": msgspec.structs.asdict(t.usage),
                "elapsed_s": t.elapsed_s,
                "endpoint": t.endpoint,
                "model": t.model,
                "finish_reason": t.finish_reason,
                **({"cache_hits": t.cache_hits} if t.cache_hits else {}),
                **({"messages": t.messages} if t.messages is not None else {}),
                **({"meta": t.meta} if t.meta else {}),
            }
            for t in task.turns
        ],
        "usage": usage,
        "timings": {
            "created_at": task.created_at,
            "finished_at": task.finished_at,
            "elapsed_s": round(finished - task.created_at, 6) if finished else None,
            "by_role": by_role,
        },
        "hops": task.hop - from_hop,
        **({"parent": task.parent} if task.parent is not None else {}),
        **({"children": task.state["children"]} if "children" in task.state else {}),
    }


def skipped_line(task: Task) -> bytes:
    return row_encoder.encode({
        "id": task.id, "status": task.status,
        **({"children": task.state["children"]} if "children" in task.state else {}),
    }) + b"\n"


def is_kept(task: Task) -> bool:
    """The ``--kept-only`` test: done, and the workflow's filters kept it."""
    return (task.status == "done" and task.state.get("kept") is True
            and "children" not in task.state)  # a fanned-out parent: its children are the rows
