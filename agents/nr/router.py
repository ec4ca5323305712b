"""A linear pipeline with early exit: each role in turn, until one filters the document.

``routing.options.pipeline`` lists the roles in order (default: the order of
``roles`` in the workflow file). After a role, a task whose ``state.kept`` is
``False`` ends as done (the filter's reason is in ``state.filter_reason``);
otherwise it goes to the next role, and after the last one it ends as done.
Pure, like every router: the task and the spec in, a decision out.
"""

from __future__ import annotations

from matrix_p2p.envelope import Task
from matrix_p2p.errors import ConfigError
from matrix_p2p.runtime.routing import Decision, Done, Failed, Forward
from matrix_p2p.workflow.spec import PythonRouting, WorkflowSpec


def pipeline(spec: WorkflowSpec) -> list[str]:
    """The roles in order; ``ConfigError`` names a bad ``routing.options.pipeline``."""
    opts = spec.routing.options if isinstance(spec.routing, PythonRouting) else {}
    order = opts.get("pipeline", list(spec.roles))
    if not isinstance(order, list) or not order or not all(isinstance(r, str) for r in order):
        raise ConfigError(f"{spec.path}: routing.options.pipeline: expected a list of role names")
    for i, name in enumerate(order):
        if name not in spec.roles:
            raise ConfigError(f"{spec.path}: routing.options.pipeline[{i}]: unknown role {name!r}")
    return order


class Pipeline:
    def entry(self, spec: WorkflowSpec) -> str:
        return pipeline(spec)[0]

    def route(self, task: Task, spec: WorkflowSpec) -> Decision:
        if task.state.get("kept") is False:
            return Done()
        order = pipeline(spec)
        if task.role not in order:
            return Failed(reason=f"role {task.role!r} is not in routing.options.pipeline")
        i = order.index(task.role)
        return Done() if i + 1 == len(order) else Forward(role=order[i + 1])
