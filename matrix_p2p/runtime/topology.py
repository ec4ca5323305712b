"""Where a workflow's messages live: every stream, consumer, bucket and subject name,
the dead-letter header format, and the one idempotent set-up call every command uses.

Pure except ``ensure_workflow`` and ``dead_letter``, which do their I/O through the
bus interface (``matrix_p2p.bus``), never through nats directly.

Layout of one workflow namespace (``<prefix>`` is ``mx`` unless the file says so):
- ``<prefix>.<wf>.task.<role>`` on stream ``<PREFIX>_<WF>_TASKS`` (work queue; one
  durable pull consumer per role, named after the role);
- ``<prefix>.<wf>.done`` / ``.failed`` on ``<PREFIX>_<WF>_RESULTS`` (limits retention,
  replayable; sinks read it with their own durable consumers);
- ``<prefix>.<wf>.dlq`` on ``<PREFIX>_<WF>_DLQ``: the original bytes, with headers
  ``Mx-Reason``, ``Mx-Subject`` and optionally ``Mx-Task`` and ``Mx-Truncated``;
- key-value bucket ``<PREFIX>_<WF>_SUBMITTED``: the ids ``submit`` has created;
- object bucket ``<PREFIX>_<WF>_OBJECTS``: offloaded large values (``offload``);
- key-value bucket ``<PREFIX>_<WF>_SEEN``: the fleet's seen-set (``seen``: dedup claims);
- key-value bucket ``<PREFIX>_<WF>_LLMCACHE``: the LLM response cache (``llm.cache``).

What the broker keeps per task, and for how long (``bench/broker_state.py`` measures
it; README "What the broker keeps per task"): each hop's msg-id for
``DUPLICATE_WINDOW_S`` (about 330-415 B of nats-server RSS each: memory is rate x
window, flat once the window is full); a ``SUBMITTED`` key and the task's results for
the whole run, on disk (in the 300k-task soak the server still grew 300-350 B of RSS
per finished task: not bounded yet). Neither is deleted once the row is written: the
results stream is what a sink rebuilds a lost or untrusted output from (``sink_state``)
and what ``--retry-failed`` and ``replay`` read; the bucket is what makes ``submit``
idempotent and what ``runset.ended`` looks up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from matrix_p2p.bus import Bus, ConsumerDef, StreamDef
from matrix_p2p.workflow.spec import WorkflowSpec

# hop msg-ids dedup a republish within this window; the broker holds every id published
# in the last window (its one per-task cost in memory), and the liveness heal re-runs
# only messages younger than half of it
DUPLICATE_WINDOW_S = 600.0
DLQ_HEADROOM = 16 * 1024  # bytes left for headers when dead-lettering a near-max message

# dead-letter headers
REASON = "Mx-Reason"
SUBJECT = "Mx-Subject"
TASK = "Mx-Task"
TRUNCATED = "Mx-Truncated"


class Names:
    """The names of one workflow namespace."""

    __slots__ = ("dlq", "dlq_stream", "done", "failed", "llm_cache_bucket", "objects_bucket",
                 "prefix", "results_stream", "seen_bucket", "submitted_bucket", "task_prefix",
                 "tasks_stream", "workflow")

    def __init__(self, workflow: str, prefix: str = "mx") -> None:
        self.workflow = workflow
        self.prefix = prefix
        base = f"{prefix}.{workflow}"
        self.task_prefix = f"{base}.task"
        self.done = f"{base}.done"
        self.failed = f"{base}.failed"
        self.dlq = f"{base}.dlq"
        up = f"{prefix}_{workflow}".upper()
        self.tasks_stream = f"{up}_TASKS"
        self.results_stream = f"{up}_RESULTS"
        self.dlq_stream = f"{up}_DLQ"
        self.submitted_bucket = f"{up}_SUBMITTED"
        self.objects_bucket = f"{up}_OBJECTS"
        self.seen_bucket = f"{up}_SEEN"
        self.llm_cache_bucket = f"{up}_LLMCACHE"

    @classmethod
    def of(cls, spec: WorkflowSpec) -> Names:
        return cls(spec.name, spec.subject_prefix)

    def task(self, role: str) -> str:
        return f"{self.task_prefix}.{role}"

    def role_of(self, subject: str) -> str | None:
        head = self.task_prefix + "."
        return subject[len(head):] if subject.startswith(head) else None

    def result(self, status: str) -> str:
        """The results subject of a finished task (``done`` or ``failed``)."""
        return self.done if status == "done" else self.failed

    # ------------------------------------------------------------ definitions
    def streams(self, replicas: int | None = None) -> list[StreamDef]:
        """``replicas`` None keeps an existing stream's replicas (a sink started without
        ``--stream-replicas`` must not scale an R3 stream down) and creates R1."""
        return [
            StreamDef(name=self.tasks_stream, subjects=[f"{self.task_prefix}.>"],
                      retention="work_queue", duplicate_window_s=DUPLICATE_WINDOW_S,
                      replicas=replicas),
            StreamDef(name=self.results_stream, subjects=[self.done, self.failed],
                      retention="limits", duplicate_window_s=DUPLICATE_WINDOW_S,
                      replicas=replicas),
            StreamDef(name=self.dlq_stream, subjects=[self.dlq], retention="limits",
                      duplicate_window_s=None, replicas=replicas),
        ]

    def role_consumer(self, role: str, *, ack_wait_s: float, max_ack_pending: int) -> ConsumerDef:
        """The role's one durable pull consumer, shared by every worker of the role."""
        return ConsumerDef(durable=role, filter_subject=self.task(role), ack_wait_s=ack_wait_s,
                           max_ack_pending=max_ack_pending, max_waiting=512)

    @staticmethod
    def results_consumer(durable: str, *, ack_wait_s: float = 30.0,
                         max_ack_pending: int = 10000) -> ConsumerDef:
        return ConsumerDef(durable=durable, filter_subject=None, ack_wait_s=ack_wait_s,
                           max_ack_pending=max_ack_pending, max_waiting=None)


def hop_msg_id(task_id: str, hop: int) -> str:
    """Dedup id of a hop's publish: a republish after a crash is dropped by JetStream."""
    return f"{task_id}:{hop}"


async def ensure_workflow(bus: Bus, spec: WorkflowSpec, roles: Iterable[str] | None = None, *,
                          replicas: int | None = None,
                          results_consumers: Iterable[str] = ()) -> Names:
    """Streams, one durable consumer per role (all roles unless given) and the named
    results consumers. Safe to run again and from every worker at once."""
    names = Names.of(spec)
    for stream in names.streams(replicas):
        await bus.ensure_stream(stream)
    for name in spec.roles if roles is None else roles:
        role = spec.roles[name]
        await bus.ensure_consumer(names.tasks_stream, names.role_consumer(
            name, ack_wait_s=spec.limits.ack_wait_s, max_ack_pending=role.max_ack_pending))
    for durable in results_consumers:
        await bus.ensure_consumer(names.results_stream, names.results_consumer(durable))
    return names


def dead_letter_headers(reason: str, subject: str, task_id: str | None = None) -> dict[str, str]:
    headers = {REASON: reason[:1000], SUBJECT: subject}
    if task_id:
        headers[TASK] = task_id
    # one-line headers only: NATS headers cannot hold CR/LF
    return {k: v.replace("\r", " ").replace("\n", " ") for k, v in headers.items()}


async def dead_letter(bus: Bus, names: Names, data: bytes, *, reason: str, subject: str,
                      task_id: str | None = None) -> None:
    """Keep the original bytes with the reason on the dead-letter stream.

    A message near max_payload plus our headers would not fit: keep its head and
    say so, rather than fail the dead-lettering and redeliver the garbage forever.
    """
    headers = dead_letter_headers(reason, subject, task_id)
    room = bus.max_payload - DLQ_HEADROOM
    if len(data) > room:
        headers[TRUNCATED] = f"original {len(data)} bytes, kept the first {room}"
        data = data[:room]
    await bus.publish(names.dlq, data, headers=headers)


def parse_dead_letter(headers: Mapping[str, str]) -> tuple[str, str, str | None, str | None]:
    """``(reason, subject, task id, truncated note)`` from a dead letter's headers."""
    return (headers.get(REASON, ""), headers.get(SUBJECT, ""), headers.get(TASK),
            headers.get(TRUNCATED))
