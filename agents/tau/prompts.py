"""The prompts of the retail domain: the policy, the assistant's and the user simulator's.

The user simulator's system prompt carries ``USER_SIM_MARKER``, the marker by
which the vLLM simulator (``matrix_p2p.sim.usersim``) recognises a user
simulator's request, and the task's instruction between ``<instructions>`` and
``</instructions>``, one ``Key: value`` line per field. A real model reads the
same prompt as ordinary guidance.
"""

from __future__ import annotations

import functools
from pathlib import Path

from .tasks import Task

#: Must equal ``matrix_p2p.sim.usersim.USER_MARKER`` (a test checks it).
USER_SIM_MARKER = "###USER-SIMULATOR###"
STOP, TRANSFER, OUT_OF_SCOPE = "###STOP###", "###TRANSFER###", "###OUT-OF-SCOPE###"
ENDING_TOKENS = {"stop": STOP, "transfer": TRANSFER, "out_of_scope": OUT_OF_SCOPE}

_USER_GUIDELINES = f"""{USER_SIM_MARKER}
You are a customer talking to a retail store's support agent. Follow the instructions
below; do not invent facts that they do not give you, and reveal what you know only
when it is needed. Write one short message per turn, as a customer would.
When your goal is reached, write {STOP} on its own line.
If you are transferred to a human agent, write {TRANSFER}.
If the agent needs something your instructions do not cover, write {OUT_OF_SCOPE}."""


@functools.cache
def policy() -> str:
    return (Path(__file__).resolve().parent / "data" / "policy.md").read_text(encoding="utf-8")


def assistant_system_prompt() -> str:
    return (
        "You are a customer service agent. Follow the policy below; use the tools to read and "
        "change the store's database.\n\n" + policy()
    )


def instruction_block(task: Task) -> str:
    s = task.user_scenario
    lines = [
        ("Persona", s.persona),
        ("Reason for call", s.reason_for_call),
        ("Known info", s.known_info),
        ("Unknown info", s.unknown_info),
        ("Other", s.task_instructions),
    ]
    body = "\n".join(f"{key}: {value}" for key, value in lines if value)
    return f"<instructions>\n{body}\n</instructions>"


def user_system_prompt(task: Task) -> str:
    """The user simulator's system prompt for ``task``."""
    return f"{_USER_GUIDELINES}\n\n{instruction_block(task)}"
