"""The task envelope: one msgspec struct that carries a task's whole state.

A task travels between roles as a single msgpack-encoded ``Task``. Whoever
handles it appends a ``Turn``, may change ``state``, and publishes the next
envelope; no process keeps task state anywhere else.

Schema evolution: new fields get defaults, a field's type never changes, and
unknown fields are ignored (a fleet runs mixed versions during a rollout).
``SCHEMA_VERSION`` is bumped when the meaning of a field changes.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import msgspec

SCHEMA_VERSION = 1

Status = Literal["running", "done", "failed"]


class Usage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Token usage of one LLM call or a sum of them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )


class Turn(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One agent step: who spoke, what, and what it cost."""

    role: str
    content: str = ""
    hop: int = 0
    usage: Usage = msgspec.field(default_factory=Usage)
    started_at: float = 0.0
    elapsed_s: float = 0.0
    llm_calls: int = 0
    cache_hits: int = 0  # of llm_calls, answered from the response cache (no tokens)
    endpoint: str | None = None
    model: str | None = None  # the model that answered the hop's last LLM call
    finish_reason: str | None = None  # and why it stopped ("stop", "length" ...)
    messages: list[dict[str, Any]] | None = None  # its request, if sink.messages is on
    meta: dict[str, Any] = msgspec.field(default_factory=dict)


class Lease(msgspec.Struct, kw_only=True):
    """A resource held by the task across hops (a sandbox, a sticky replica...): which
    resource (``kind``, the name the workflow file gives it), its id at the service
    (``ref``), the service that holds it (``where``) and when it lapses unless renewed."""

    kind: str
    ref: str
    expires_at: float | None = None
    where: str = ""


class Task(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The envelope. ``id`` is stable across hops; ``hop`` grows by one per hop."""

    id: str
    workflow: str
    role: str
    v: int = SCHEMA_VERSION
    workflow_version: str = ""  # the workflow file's own `version:`
    code_version: str = ""  # hash of the workflow file and its agents' code (workflow/version.py)
    source: str = ""
    row_index: int = 0
    trial: int = 0
    seed: int = 0
    row: dict[str, Any] = msgspec.field(default_factory=dict)
    turns: list[Turn] = msgspec.field(default_factory=list)
    state: dict[str, Any] = msgspec.field(default_factory=dict)
    leases: list[Lease] = msgspec.field(default_factory=list)
    hop: int = 0
    status: Status = "running"
    error: str | None = None
    created_at: float = 0.0
    finished_at: float | None = None
    objects: list[str] = msgspec.field(default_factory=list)  # offloaded values (offload.py)
    parent: str | None = None  # the task that spawned this one (fan-out: runtime/hop.py)

    def usage(self) -> Usage:
        total = Usage()
        for turn in self.turns:
            total = total + turn.usage
        return total

    def usage_by_role(self) -> dict[str, Usage]:
        out: dict[str, Usage] = {}
        for turn in self.turns:
            out[turn.role] = out.get(turn.role, Usage()) + turn.usage
        return out



class EnvelopeError(ValueError):
    """Raised when bytes are not a valid envelope; the message names the bad field."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Task)


def encode(task: Task) -> bytes:
    return _encoder.encode(task)


def decode(data: bytes) -> Task:
    """Decode and validate an envelope. Raises ``EnvelopeError`` with the reason."""
    try:
        task = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise EnvelopeError(f"invalid envelope: {exc}") from None
    except msgspec.DecodeError as exc:
        raise EnvelopeError(f"undecodable envelope ({len(data)} bytes): {exc}") from None
    if not task.id:
        raise EnvelopeError("invalid envelope: `$.id` is empty")
    if task.hop < 0:
        raise EnvelopeError("invalid envelope: `$.hop` is negative")
    return task


def new_task(
    *,
    task_id: str,
    workflow: str,
    role: str,
    row: dict[str, Any],
    workflow_version: str = "",
    code_version: str = "",
    source: str = "",
    row_index: int = 0,
    trial: int = 0,
    seed: int = 0,
    now: float | None = None,
) -> Task:
    return Task(
        id=task_id,
        workflow=workflow,
        workflow_version=workflow_version,
        code_version=code_version,
        role=role,
        source=source,
        row_index=row_index,
        trial=trial,
        seed=seed,
        row=row,
        created_at=time.time() if now is None else now,
    )
