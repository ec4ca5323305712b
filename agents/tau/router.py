"""Routing of the tau workflow: the user simulator and the assistant take turns until the
conversation ends, then the reward role scores it. Pure.

Hop granularity (a decision, see the README): one hop is one *turn* of a
speaker. The assistant's hop runs its whole tool loop (LLM call, tool calls
executed in the sandbox, LLM call again ...) until it writes to the user, so a
turn with five tool calls is one hop, not five. Every hop republishes the
envelope with the whole trace, so one hop per tool call would write the
growing trace again after every call (quadratic in the trajectory's length)
and add a broker round trip per tool call for nothing: the sandbox lease, not
the hop, is what keeps the tool state.
"""

from __future__ import annotations

from typing import Any

from matrix_p2p.envelope import Task
from matrix_p2p.runtime.routing import Decision, Done, Forward
from matrix_p2p.workflow.spec import PythonRouting, WorkflowSpec

USER, ASSISTANT, REWARD = "user", "assistant", "reward"
MAX_STEPS, MAX_ERRORS = 200, 10
TERMINATIONS = ("user_stop", "transfer", "out_of_scope", "max_steps", "max_errors")


def limits(spec: WorkflowSpec) -> tuple[int, int]:
    """``(max_steps, max_errors)`` from ``routing.options`` (defaults 200 and 10)."""
    opts: dict[str, Any] = spec.routing.options if isinstance(spec.routing, PythonRouting) else {}
    return int(opts.get("max_steps", MAX_STEPS)), int(opts.get("max_errors", MAX_ERRORS))


class TauRouter:
    """user -> assistant -> user ... until ``state['termination']``, then reward, then done.
    A hop that restarted the trajectory (its sandbox was lost) leaves no termination and
    no reward: the conversation starts over at the user."""

    def entry(self, spec: WorkflowSpec) -> str:
        return USER

    def route(self, task: Task, spec: WorkflowSpec) -> Decision:
        state = task.state
        if task.role == REWARD:
            return Done(reason=str(state.get("termination", ""))) if "reward" in state \
                else Forward(role=USER)
        if state.get("termination"):
            return Forward(role=REWARD)
        return Forward(role=ASSISTANT if task.role == USER else USER)
