"""The simulated customer of tool-use workflows. Pure: messages and seeds in, text out.

A chat request whose text contains ``USER_MARKER`` (``###USER-SIMULATOR###``,
in the user simulator's system prompt) is answered as the customer. Protocol:

- **Roles are the user simulator's**: the support agent's words arrive as
  ``user`` messages, the customer's own earlier turns as ``assistant``
  messages. The turn number ``t`` is the number of ``assistant`` messages.
- **The instruction** is the text between ``<instructions>`` and
  ``</instructions>`` (else the system messages), one ``Key: value`` per line;
  ``Reason for call`` and ``Known info`` are read, the whole instruction
  decides the ending.
- **The ending token**: ``###TRANSFER###`` when the instruction mentions a
  "human agent", ``###OUT-OF-SCOPE###`` when it says "out of scope", else
  ``###STOP###``.
- **The turn budget**, 3 to 6 turns, is drawn from an RNG seeded by the
  server's seed and the instruction, so it is the same at every turn of one
  conversation (the request RNG changes with every new message).
- **Turn 0**: a greeting, the reason for the call and the known info, turned
  into the first person ("I want to cancel my order #W1234567 ... I am Sara
  Doe and my zip code is 12345."), so that the ids the assistant must use are
  in the conversation.
- **Later turns**, the first rule that applies: the agent's last message says
  the customer is being transferred to a human → ``###TRANSFER###``; ``t`` has
  reached the budget → a thank-you line, then the ending token on its own
  line; the agent asks for a confirmation ("confirm", "proceed", "yes") →
  agree; the agent asks for an email, name or zip code → the known info;
  otherwise restate the reason for the call.

Wording is drawn from the request's RNG. The answer is never cut by
``max_tokens`` (like the responder's answer line): the ending token must
reach the workflow.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

USER_MARKER = "###USER-SIMULATOR###"
STOP, TRANSFER, OUT_OF_SCOPE = "###STOP###", "###TRANSFER###", "###OUT-OF-SCOPE###"
MIN_TURNS, MAX_TURNS = 3, 6

_BLOCK_RE = re.compile(r"<instructions>(.*?)</instructions>", re.DOTALL)
_FIELD_RE = re.compile(r"^\s*([A-Za-z][A-Za-z ]*):\s*(.*)$", re.MULTILINE)
_FIRST_PERSON = [
    (re.compile(r"\bYou are\b"), "I am"),
    (re.compile(r"\byou are\b"), "I am"),
    (re.compile(r"\bYour\b"), "My"),
    (re.compile(r"\byour\b"), "my"),
    (re.compile(r"\bYou\b"), "I"),
    (re.compile(r"\byou\b"), "I"),
]
_TRANSFERRED_RE = re.compile(r"transferr(?:ed|ing) (?:you )?to a human", re.IGNORECASE)
_CONFIRM_RE = re.compile(r"\b(?:confirm|proceed|yes)\b", re.IGNORECASE)
_IDENTITY_RE = re.compile(r"\b(?:email|zip|name)\b", re.IGNORECASE)

_GREETINGS = ("Hi!", "Hello.", "Hi there,", "Good day.")
_AGREE = ("Yes, please go ahead.", "Yes, I confirm.", "Yes, that's right, please proceed.")
_THANKS = ("Thank you, that's all I needed.", "Great, thanks for your help.", "Thanks, that's everything.")
_RESTATE = ("Could you help me with this?", "Let me repeat what I need.", "To be clear:")


def is_user_sim(text: str) -> bool:
    return USER_MARKER in text


def first_person(text: str) -> str:
    """An instruction written to the customer ("You want ...") as the customer says it."""
    for pattern, replacement in _FIRST_PERSON:
        text = pattern.sub(replacement, text)
    return text


def _instruction(messages: list[dict[str, Any]]) -> str:
    system = "\n".join(str(m.get("content") or "") for m in messages if m.get("role") == "system")
    everything = system + "\n" + "\n".join(str(m.get("content") or "") for m in messages)
    found = _BLOCK_RE.search(everything)
    return found.group(1) if found else system


def ending_token(instruction: str) -> str:
    lowered = instruction.lower()
    if "human agent" in lowered:
        return TRANSFER
    if "out of scope" in lowered:
        return OUT_OF_SCOPE
    return STOP


def turn_budget(seed: int, instruction: str) -> int:
    """The number of customer turns before the ending token, fixed per conversation."""
    digest = hashlib.blake2b(f"{seed}\0{instruction}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big")).randint(MIN_TURNS, MAX_TURNS)


def user_turn(messages: list[dict[str, Any]], rng: random.Random, seed: int) -> str:
    """The customer's next message (see the module doc)."""
    instruction = _instruction(messages)
    fields = {k.strip().lower(): v.strip() for k, v in _FIELD_RE.findall(instruction)}
    reason = first_person(fields.get("reason for call", "I need help with an order."))
    known = first_person(fields.get("known info", ""))
    turn = sum(1 for m in messages if m.get("role") == "assistant")
    agent_turns = [str(m.get("content") or "") for m in messages if m.get("role") == "user"]
    agent_said = agent_turns[-1] if agent_turns else ""
    if turn == 0:
        return " ".join(part for part in (rng.choice(_GREETINGS), reason, known) if part)
    if _TRANSFERRED_RE.search(agent_said):
        return TRANSFER
    if turn >= turn_budget(seed, instruction):
        return f"{rng.choice(_THANKS)}\n{ending_token(instruction)}"
    if _CONFIRM_RE.search(agent_said):
        return rng.choice(_AGREE)
    if _IDENTITY_RE.search(agent_said) and known:
        return known
    return f"{rng.choice(_RESTATE)} {reason}"
