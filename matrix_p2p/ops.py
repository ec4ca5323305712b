"""Operations on stored messages: dead-letter tools and replay of stored results.

Dead letters live on ``<prefix>.<wf>.dlq`` (stream ``<PREFIX>_<WF>_DLQ``), one
message per rejected input with its original bytes and the headers
``Mx-Reason``, ``Mx-Subject`` (where it arrived), optionally ``Mx-Task`` and
``Mx-Truncated``. ``dlq_requeue`` publishes the bytes back to their original
subject (or to a chosen role, rewriting the envelope's ``role``), then deletes
the dead letter. The publish carries the msg-id ``dlq:<seq>:<stored-ns>``, so a
crash between the publish and the delete does not requeue twice.

Replay feeds finished tasks from the results stream into a role, for example
to re-judge every done task with a new judge without regenerating dialogues.
A replayed task keeps its turns, row and state, becomes ``running`` at the
target role, and gets a new id ``<original id>~r<generation>`` (and
``state["replay"] = {"generation", "of", "role"}``), so the sink writes it as a
new row next to the original. A replay is recorded in the target workflow's
"submitted" key-value bucket before it counts as done, so running the same
replay (same generation) again publishes nothing new; a crash mid-replay is
resumed by running it again (the hop msg-id dedups the one in flight).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

import msgspec
import structlog

from matrix_p2p import envelope
from matrix_p2p.bus import Bus, StoredMsg
from matrix_p2p.envelope import EnvelopeError, Task
from matrix_p2p.errors import ConfigError
from matrix_p2p.naming import Names, hop_msg_id
from matrix_p2p.source import wait_for_room
from matrix_p2p.spec import WorkflowSpec

log = structlog.get_logger(__name__)

REPLAY_SEP = "~r"
_REPLAY_RE = re.compile(r"^(?P<base>.+)~r(?P<gen>[0-9]+)$")


# ---------------------------------------------------------------- dead letters
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
    h = m.headers
    return DeadLetter(seq=m.seq, time=m.time, subject=h.get("Mx-Subject", ""),
                      reason=h.get("Mx-Reason", ""), size=len(m.data), task=h.get("Mx-Task"),
                      truncated=h.get("Mx-Truncated"))


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
        h = m.headers
        if "Mx-Truncated" in h:
            result.skipped[m.seq] = f"truncated when dead-lettered ({h['Mx-Truncated']})"
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
            subject = h.get("Mx-Subject", "")
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


# ---------------------------------------------------------------- replay
Which = Literal["done", "failed", "all"]


class ReplayResult(msgspec.Struct):
    replayed: int = 0
    already: int = 0  # replayed before (same generation)
    skipped: int = 0  # other generations, undecodable results, duplicates of an id


def replay_id(task_id: str, generation: int) -> str:
    """``x`` -> ``x~r2``; a replay of a replay keeps the original's base id."""
    return f"{split_replay_id(task_id)[0]}{REPLAY_SEP}{generation}"


def split_replay_id(task_id: str) -> tuple[str, int]:
    """``x~r2`` -> ``("x", 2)``; an original id has generation 0."""
    m = _REPLAY_RE.match(task_id)
    return (m["base"], int(m["gen"])) if m else (task_id, 0)


def _kv_key(task_id: str) -> str:
    # "~" is not allowed in key-value keys; "=" is, and source ids never contain it
    return task_id.replace("~", "=")


def replayed_task(task: Task, *, target: WorkflowSpec, role: str, generation: int) -> Task:
    """The envelope that re-enters ``role``: same turns, running, a new id. Pure."""
    state = {k: v for k, v in task.state.items() if k != "stop_reason"}
    state["replay"] = {"generation": generation, "of": task.id, "role": role}
    return msgspec.structs.replace(
        task, id=replay_id(task.id, generation), workflow=target.name,
        workflow_version=target.version, role=role, status="running", error=None,
        finished_at=None, state=state,
    )


async def replay(
    bus: Bus,
    spec: WorkflowSpec,
    *,
    role: str,
    which: Which = "done",
    generation: int = 1,
    from_generation: int = 0,
    target: WorkflowSpec | None = None,
    limit: int | None = None,
    dry_run: bool = False,
) -> ReplayResult:
    """Feed ``spec``'s stored results into ``role`` of ``target`` (default: ``spec``).

    Only results of generation ``from_generation`` are taken (0: the original
    tasks), each task id once. Idempotent per ``generation`` (see the module
    docstring).

    Error handling: bus errors propagate; rerun the same replay to resume.
    """
    target = target or spec
    if role not in target.roles:
        raise ConfigError(f"--role: unknown role {role!r} in workflow {target.name!r} "
                          f"(roles: {', '.join(target.roles)})")
    if generation < 1:
        raise ConfigError("--generation: must be at least 1")
    if generation == from_generation:
        raise ConfigError("--generation: must differ from --from-generation")
    src, dst = Names.of(spec), Names.of(target)
    from matrix_p2p.worker import ensure_workflow

    if not dry_run:
        await ensure_workflow(bus, target, [role])
    kv = await bus.submitted_kv(dst)
    subject = {"done": src.done, "failed": src.failed, "all": f"{src.prefix}.{src.workflow}.*"}[which]
    result = ReplayResult()
    seen: set[str] = set()
    window, live = target.limits.max_inflight, target.limits.max_inflight  # check at the start
    async for m in bus.iter_stream(src.results_stream, subject):
        if limit is not None and result.replayed + result.already >= limit:
            break
        try:
            task = envelope.decode(m.data)
        except EnvelopeError:
            result.skipped += 1
            continue
        if task.status not in ("done", "failed") or task.id in seen:
            result.skipped += 1
            continue
        seen.add(task.id)
        if split_replay_id(task.id)[1] != from_generation:
            result.skipped += 1
            continue
        nxt = replayed_task(task, target=target, role=role, generation=generation)
        if await kv.exists(_kv_key(nxt.id)):
            result.already += 1
            continue
        result.replayed += 1
        if dry_run:
            continue
        # admission control, as in `submit`: a large replay never floods the task stream
        if live >= window or result.replayed % 256 == 0:
            live = await wait_for_room(bus, dst, window, None)
        live += 1
        # publish first, then record: a crash in between republishes, dedup'd by msg-id
        await bus.publish(dst.task(role), envelope.encode(nxt), msg_id=hop_msg_id(nxt.id, nxt.hop))
        await kv.create(_kv_key(nxt.id))
    log.info("replay.finished", workflow=spec.name, target=target.name, role=role,
             generation=generation, **msgspec.structs.asdict(result))
    return result
