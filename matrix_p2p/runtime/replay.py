"""Replay of stored results: feeds finished tasks from the results stream into a role, for example
to re-judge every done task with a new judge without regenerating dialogues.
A replayed task keeps its turns, row and state (less ``rounds`` and
``stop_reason``), becomes ``running`` at the target role, and gets a new id
``<original id>~r<generation>`` (and ``state["replay"] = {"generation", "of",
"role", "from_turn", "from_hop"}``), so the sink writes it as a new row next to
the original; that row's usage, hops and timings count only what the replay
added (turns from ``from_turn`` on). A replay is recorded in the target workflow's
"submitted" key-value bucket before it counts as done, so running the same
replay (same generation) again publishes nothing new; a crash mid-replay is
resumed by running it again (the hop msg-id dedups the one in flight).
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec
import structlog

from matrix_p2p import envelope
from matrix_p2p.bus import Bus
from matrix_p2p.envelope import EnvelopeError, Task
from matrix_p2p.errors import ConfigError
from matrix_p2p.runtime.attempts import kv_key
from matrix_p2p.runtime.source import wait_for_room
from matrix_p2p.runtime.topology import Names, ensure_workflow, hop_msg_id
from matrix_p2p.workflow.spec import WorkflowSpec
from matrix_p2p.workflow.version import code_hash

log = structlog.get_logger(__name__)

REPLAY_SEP = "~r"
_REPLAY_RE = re.compile(r"^(?P<base>.+)~r(?P<gen>[0-9]+)$")


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


def replayed_task(task: Task, *, target: WorkflowSpec, role: str, generation: int,
                  code_version: str | None = None) -> Task:
    """The envelope that re-enters ``role``: same turns, running, a new id. Pure."""
    # the replay counts its own rounds, usage and hops: the original's stay in its own row
    state = {k: v for k, v in task.state.items() if k not in ("stop_reason", "rounds")}
    state["replay"] = {"generation": generation, "of": task.id, "role": role,
                       "from_turn": len(task.turns), "from_hop": task.hop}
    return msgspec.structs.replace(
        task, id=replay_id(task.id, generation), workflow=target.name,
        workflow_version=target.version,
        code_version=task.code_version if code_version is None else code_version, role=role,
        status="running", error=None, finished_at=None, state=state,
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
    if not dry_run:
        await ensure_workflow(bus, target, [role])
    kv = await bus.key_value(dst.submitted_bucket)
    subject = {"done": src.done, "failed": src.failed, "all": f"{src.prefix}.{src.workflow}.*"}[which]
    result = ReplayResult()
    digest = code_hash(target)
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
        nxt = replayed_task(task, target=target, role=role, generation=generation,
                            code_version=digest)
        if await kv.exists(kv_key(nxt.id)):
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
        await kv.create(kv_key(nxt.id))
    log.info("replay.finished", workflow=spec.name, target=target.name, role=role,
             generation=generation, **msgspec.structs.asdict(result))
    return result
