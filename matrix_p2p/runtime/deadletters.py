"""Dead letters: list, show and requeue what the workers and sinks could not take.

Dead letters live on ``<prefix>.<wf>.dlq`` (stream ``<PREFIX>_<WF>_DLQ``), one
message per rejected input with its original bytes and the headers named in
``topology`` (``Mx-Reason``, ``Mx-Subject`` where it arrived, optionally
``Mx-Task`` and ``Mx-Truncated``). ``dlq_requeue`` publishes the bytes back to
their original subject (or to a chosen role, rewriting the envelope's
``role``), then deletes the dead letter. The publish carries the msg-id
``dlq:<seq>:<stored-ns>``, so a crash between the publish and the delete does
not requeue twice.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
import structlog

from matrix_p2p import envelope
from matrix_p2p.bus import Bus, StoredMsg
from matrix_p2p.envelope import EnvelopeError, Task
from matrix_p2p.errors import ConfigError
from matrix_p2p.runtime.topology import Names, parse_dead_letter
from matrix_p2p.workflow.spec import WorkflowSpec

log = structlog.get_logger(__name__)


class DeadLetter(msgspec.Struct, kw_only=True):
    """One dead letter as ``dlq list`` shows it."""

    seq: int
    time: float
    subject: str  # where the message arrived before it was dead-lettered
    reason: str
    size: int
    task: str | None = None
    truncated: str | None = None


class DeadLetterDetail(msgspec.Struct, kw_only=True):
    """One dead letter in full: headers and, when the bytes decode, the envelope."""

    letter: DeadLetter
    headers: dict[str, str]
    task: Task | None
    decode_error: str | None
    data: bytes


class RequeueResult(msgspec.Struct):
    requeued: list[int] = msgspec.field(default_factory=list)
    skipped: dict[int, str] = msgspec.field(default_factory=dict)  # seq -> why


def _letter(m: StoredMsg) -> DeadLetter:
    reason, subject, task_id, truncated = parse_dead_letter(m.headers)
    return DeadLetter(seq=m.seq, time=m.time, subject=subject, reason=reason, size=len(m.data),
                      task=task_id, truncated=truncated)


async def dlq_list(bus: Bus, names: Names, *, limit: int | None = None) -> list[DeadLetter]:
    """Dead letters in arrival order (the first ``limit``)."""
    out: list[DeadLetter] = []
    async for m in bus.iter_stream(names.dlq_stream, names.dlq):
        out.append(_letter(m))
        if limit is not None and len(out) >= limit:
            break
    return out


async def dlq_show(bus: Bus, names: Names, seq: int) -> DeadLetterDetail:
    """One dead letter by sequence. Raises ``ConfigError`` if there is none."""
    m = await bus.stored(names.dlq_stream, seq)
    if m is None:
        raise ConfigError(f"no dead letter #{seq} in {names.dlq_stream} "
                          f"(see `dlq list {names.workflow}`)")
    task: Task | None = None
    error: str | None = None
    try:
        task = envelope.decode(m.data)
    except EnvelopeError as exc:
        error = str(exc)
    return DeadLetterDetail(letter=_letter(m), headers=m.headers, task=task, decode_error=error,
                            data=m.data)


async def dlq_requeue(
    bus: Bus,
    spec: WorkflowSpec,
    seqs: Iterable[int] | None,
    *,
    role: str | None = None,
    dry_run: bool = False,
) -> RequeueResult:
    """Publish dead letters back (``seqs``, or all when None) and remove them from the DLQ.

    To the original subject, or with ``role`` to that role's subject: the
    envelope's ``role`` is rewritten so the worker accepts it. A truncated
    dead letter (its original was too large to keep) or, with ``role``, one
    that does not decode, is skipped with the reason.

    Error handling: bus errors propagate; what was requeued before stays requeued.
    """
    names = Names.of(spec)
    if role is not None and role not in spec.roles:
        raise ConfigError(f"--role: unknown role {role!r} in workflow {spec.name!r} "
                          f"(roles: {', '.join(spec.roles)})")
    result = RequeueResult()
    if seqs is None:
        msgs = [m async for m in bus.iter_stream(names.dlq_stream, names.dlq)]
    else:
        msgs = []
        for seq in seqs:
            m = await bus.stored(names.dlq_stream, seq)
            if m is None:
                result.skipped[seq] = "no such dead letter"
            else:
                msgs.append(m)
    for m in msgs:
        _, original_subject, _, truncated = parse_dead_letter(m.headers)
        if truncated is not None:
            result.skipped[m.seq] = f"truncated when dead-lettered ({truncated})"
            continue
        data = m.data
        if role is not None:
            subject = names.task(role)
            try:
                task = envelope.decode(data)
            except EnvelopeError as exc:
                result.skipped[m.seq] = f"cannot requeue to a role: {exc}"
                continue
            task.role = role
            task.workflow = spec.name
            data = envelope.encode(task)
        else:
            subject = original_subject
            if not subject.startswith(f"{names.prefix}.{names.workflow}."):
                result.skipped[m.seq] = f"original subject {subject!r} is not in this workflow"
                continue
        if dry_run:
            result.requeued.append(m.seq)
            continue
        await bus.publish(subject, data, msg_id=f"dlq:{m.seq}:{int(m.time * 1e9)}")
        await bus.delete_msg(names.dlq_stream, m.seq)
        log.info("dlq.requeued", seq=m.seq, subject=subject)
        result.requeued.append(m.seq)
    return result
