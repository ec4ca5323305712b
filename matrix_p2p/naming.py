"""Subjects, stream and consumer names of a workflow namespace. Pure."""

from __future__ import annotations

from matrix_p2p.spec import WorkflowSpec


class Names:
    """Where a workflow's messages live: ``<prefix>.<workflow>.task.<role>`` and friends."""

    __slots__ = ("dlq", "dlq_stream", "done", "failed", "prefix", "results_stream",
                 "submitted_bucket", "task_prefix", "tasks_stream", "workflow")

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

    @classmethod
    def of(cls, spec: WorkflowSpec) -> Names:
        return cls(spec.name, spec.subject_prefix)

    def task(self, role: str) -> str:
        return f"{self.task_prefix}.{role}"

    def role_of(self, subject: str) -> str | None:
        head = self.task_prefix + "."
        return subject[len(head):] if subject.startswith(head) else None


def hop_msg_id(task_id: str, hop: int) -> str:
    """Dedup id of a hop's publish: a republish after a crash is dropped by JetStream."""
    return f"{task_id}:{hop}"
