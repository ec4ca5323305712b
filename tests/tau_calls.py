"""A fixed set of retail tool calls for comparing the environment's two ways of running:
a process per call (``env.py call``) and a session (``env.py serve``).

Every bundled task kind's expected actions, applied in turn to one database,
with each written order and user read back right after the write (a write
changes the dicts' key order in a database that is saved and loaded again;
tools print JSON in dict order), then mistakes a model makes: an unknown tool,
missing, extra and mistyped arguments, a refused policy action, a repeat.
"""

from __future__ import annotations

from typing import Any

from matrix_p2p_agents.tau.retail_tools import TOOLS
from matrix_p2p_agents.tau.tasks import load_tasks

Call = tuple[str, Any]


def fixed_calls() -> list[Call]:
    calls: list[Call] = []
    kinds: set[str] = set()
    for task in load_tasks():
        if task.kind in kinds:
            continue
        kinds.add(task.kind)
        for action in task.expected_actions:
            calls.append((action.name, dict(action.arguments)))
            if TOOLS[action.name].writes:
                if "order_id" in action.arguments:
                    calls.append(("get_order_details", {"order_id": action.arguments["order_id"]}))
                if "user_id" in action.arguments:
                    calls.append(("get_user_details", {"user_id": action.arguments["user_id"]}))
    cancel = next(c for c in calls if c[0] == "cancel_pending_order")
    calls += [
        cancel,  # again: the order is no longer pending
        ("get_user_details", {"user_id": "chen_khan_0000"}),
        ("no_such_tool", {}),
        ("get_order_details", {}),
        ("get_order_details", {"order_id": "#W0000000", "extra": 1}),
        ("get_order_details", {"order_id": 7}),
        ("get_order_details", ["#W4979131"]),
        ("cancel_pending_order", {"order_id": cancel[1]["order_id"], "reason": "bored"}),
        ("calculate", {"expression": "(12.5 + 7.25) * 3"}),
        ("find_user_id_by_email", {"email": "nobody@example.com"}),
        ("list_all_product_types", {}),
    ]
    return calls
