"""What an agent is: a role's ``handle(task, ctx)``, plus the per-hop context it gets.

An agent mutates the task it is given (appends turns through ``ctx.say``,
updates ``task.state``) and returns. To hand the task back for a later retry
it raises ``RetryLater``; to end it as failed, ``FailTask``. It never publishes
or acks: the worker does that after routing decides.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import msgspec
import structlog

from matrix_p2p.envelope import Task, Turn, Usage
from matrix_p2p.errors import ConfigError
from matrix_p2p.llm import structured
from matrix_p2p.llm.types import LLMError, LLMResponse, LLMResult
from matrix_p2p.resources.base import Resources
from matrix_p2p.workflow.refs import import_ref
from matrix_p2p.workflow.spec import LLMResource, RoleSpec, WorkflowSpec

# model settings sent only when the workflow gives them (else the server's default)
_OPTIONAL_SETTINGS = ("model", "top_p", "stop", "seed")


class ChatClient(Protocol):
    async def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        role: str = ...,
        sticky_key: str | None = ...,
        sticky_hint: str | None = ...,
        max_tokens: int | None = ...,
        temperature: float | None = ...,
        **extra: Any,
    ) -> LLMResult: ...


class SeenSet(Protocol):
    """First claim of a key wins, fleet-wide (``runtime.seen.KVSeenSet``)."""

    async def claim(self, key: str, task_id: str) -> str:
        """Record ``task_id`` as the owner of ``key`` unless one exists; return the owner."""
        ...


class Context:
    """One hop's view of the runtime: the LLM, the spec, a bound logger, the clock."""

    __slots__ = (
        "_cache_hits",
        "_endpoint",
        "_finish_reason",
        "_hop_start",
        "_llm",
        "_llm_calls",
        "_messages",
        "_model",
        "_started",
        "_usage",
        "children",
        "log",
        "resource",
        "resources",
        "role",
        "seen",
        "spec",
        "task",
    )

    def __init__(
        self,
        *,
        task: Task,
        role: RoleSpec,
        spec: WorkflowSpec,
        llm: ChatClient | None,
        resource: LLMResource | None,
        log: Any,
        now: float,
        resources: Resources | None = None,
        children: list[dict[str, Any]] | None = None,
        seen: SeenSet | None = None,
    ) -> None:
        self.task = task
        self.seen = seen  # the fleet's seen-set (None outside a worker)
        self.children = [] if children is None else children
        self.resources = resources or Resources()
        self.role = role
        self.spec = spec
        self.resource = resource
        self.log = log
        self._llm = llm
        self._started = now
        self._usage = Usage()
        self._llm_calls = 0
        self._cache_hits = 0
        self._endpoint: str | None = None
        self._model: str | None = None
        self._finish_reason: str | None = None
        self._messages: list[dict[str, Any]] | None = None
        self._hop_start = len(task.turns)  # turns past this one were said in this hop

    async def chat(self, messages: Sequence[Mapping[str, Any]], *,
                   response_format: type[msgspec.Struct] | Mapping[str, Any] | None = None,
                   max_reasks: int = structured.DEFAULT_MAX_REASKS,
                   **params: Any) -> LLMResult:
        """Call the role's LLM. Returns ``LLMResponse`` or ``LLMError``, never raises.

        Sticky per task by default (prefix-cache reuse across the task's turns).
        The workflow's model settings for the role (its LLM resource under the role's
        ``llm_settings``: ``model``, ``max_tokens``, ``temperature``, ``top_p``,
        ``stop``, ``seed``, ``extra_body``) are the defaults; ``params`` win over them.

        ``response_format``: a msgspec ``Struct`` type or a JSON schema dict. The request
        carries it as OpenAI/vLLM ``response_format`` (json_schema), and the answer's
        ``parsed`` is the validated value (an instance of the Struct, or plain JSON).
        An invalid answer is asked again with the validation error appended, at most
        ``max_reasks`` times; then the result is ``LLMError(kind="invalid_output")``,
        whose ``unwrap()`` fails the task with the error. Every attempt's tokens count
        in the hop's turn, once.
        """
        if self._llm is None:
            return LLMError(kind="no_endpoints", message=f"role {self.role.name!r} has no LLM")
        res = self.resource
        params.setdefault("max_tokens", res.max_tokens if res else None)
        params.setdefault("temperature", res.temperature if res else None)
        if res is not None:
            for name in _OPTIONAL_SETTINGS:
                value = getattr(res, name)
                if value is not None:
                    params.setdefault(name, value)
            for key, value in res.extra_body.items():
                params.setdefault(key, value)
        sticky = res is None or res.sticky
        params.setdefault("sticky_key", self.task.id if sticky else None)
        if sticky and "sticky_hint" not in params:
            # the replica that served the task's last turn, maybe in another process
            params["sticky_hint"] = next(
                (t.endpoint for t in reversed(self.task.turns) if t.endpoint), None)
        if response_format is None:
            return await self._call_llm(messages, params)
        fmt = structured.Structured(response_format)
        params["response_format"] = fmt.wire()
        asked: Sequence[Mapping[str, Any]] = messages
        reasks = 0
        while True:
            result = await self._call_llm(asked, params)
            if not isinstance(result, LLMResponse):
                return result
            try:
                value = fmt.parse(result.text)
            except structured.Invalid as exc:
                if not structured.should_reask(reasks, max_reasks):
                    return LLMError(
                        kind="invalid_output", endpoint=result.endpoint,
                        attempts=reasks + 1,
                        message=f"answer does not follow {fmt.name} after {reasks + 1} "
                                f"attempt(s): {exc}")
                reasks += 1
                asked = structured.reask_messages(messages, result.text, str(exc))
                continue
            return msgspec.structs.replace(result, parsed=value)

    async def _call_llm(self, messages: Sequence[Mapping[str, Any]],
                        params: Mapping[str, Any]) -> LLMResult:
        # each call's usage is added once, here: re-asks of a structured call included
        assert self._llm is not None
        result = await self._llm.chat(messages, role=self.role.name, **params)
        self._llm_calls += 1
        if isinstance(result, LLMResponse) and result.cached:
            self._cache_hits += 1  # its tokens were counted in the row that generated them
            self._model = result.model or self._model
            self._finish_reason = result.finish_reason
        elif isinstance(result, LLMResponse):
            self._usage = self._usage + Usage(
                prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens
            )
            self._endpoint = result.endpoint
            self._model = result.model or None
            self._finish_reason = result.finish_reason
        if self.spec.sink.messages:
            self._messages = [dict(m) for m in messages]
        return result

    def say(self, content: str, **meta: Any) -> Turn:
        """Append this role's turn to the task and return it. The turn carries the usage
        of the LLM calls since the hop began or since the previous ``say``, and the time
        since then (``elapsed_s``), so the turns of one hop do not overlap."""
        now = time.time()
        turn = Turn(
            role=self.role.name,
            content=content,
            hop=self.task.hop,
            usage=self._usage,
            started_at=self._started,
            elapsed_s=round(now - self._started, 6),
            llm_calls=self._llm_calls,
            cache_hits=self._cache_hits,
            endpoint=self._endpoint,
            model=self._model,
            finish_reason=self._finish_reason,
            messages=self._messages,
            meta=meta,
        )
        self.task.turns.append(turn)
        self._usage = Usage()
        self._llm_calls = 0
        self._cache_hits = 0
        self._messages = None
        self._started = now
        return turn

    def spawn(self, state: Mapping[str, Any] | None = None,
              row: Mapping[str, Any] | None = None, *, turns: Sequence[Turn] = ()) -> int:
        """Fan out: one more child task, returns its index. Once the hop succeeds, each
        child (id ``<task>/<index>``, ``parent`` set) continues the workflow as this task
        would have, with ``state`` on top of this task's state and ``row`` (default:
        this task's row); this task ends as done with ``state.children`` (and without
        ``kept``: its children are the rows). A redelivered hop spawns the same ids
        again, and none is created twice.

        ``turns``: turns said in this hop (what ``say`` returned) that belong to this
        child alone, such as the calls that wrote its question. They leave this task's
        history: the child's dialogue is this task's turns, then these, then what the
        child says later, and its row counts only its own. Every turn not given to a
        child (the history, and shared work of this hop, such as a call that split the
        document) stays in this task's row and is counted there once.

        Giving a turn that this hop did not say, or one already given to another
        child, is a bug in the agent (``TypeError``: the task fails at once).
        """
        said = self.task.turns[self._hop_start:]
        taken = {id(t) for c in self.children for t in c.get("turns", ())}
        for t in turns:
            if not any(t is s for s in said):
                raise TypeError("ctx.spawn(turns=...): a turn that this hop did not say "
                                "(pass what ctx.say returned)")
            if id(t) in taken:
                raise TypeError("ctx.spawn(turns=...): a turn given to a child twice "
                                "(its tokens would count in two rows)")
            taken.add(id(t))
        self.children.append({"state": dict(state or {}),
                              **({"row": dict(row)} if row is not None else {}),
                              **({"turns": list(turns)} if turns else {})})
        return len(self.children) - 1

    def finish(self) -> None:
        """Called by the worker when ``handle`` ends (returned, or failed the task): LLM
        calls made since the last ``say`` get a turn of their own, so that their tokens
        are in the task's row."""
        if self._llm_calls:
            self.say("")


class Agent:
    """Base class for roles. Subclasses override ``handle``; ``setup``/``close`` are optional.

    One instance serves every concurrent task of its role in a worker process,
    so it must keep no per-task state on ``self``.
    """

    def __init__(self, role: RoleSpec, spec: WorkflowSpec) -> None:
        self.role = role
        self.spec = spec
        # under the package's logger: quiet in an application that configures no logging
        self.log = structlog.get_logger(f"matrix_p2p.agent.{role.name}")

    async def setup(self) -> None:
        """Called once per worker before the first task."""

    async def close(self) -> None:
        """Called once per worker at shutdown."""

    async def handle(self, task: Task, ctx: Context) -> None:
        raise NotImplementedError


def make_agent(spec: WorkflowSpec, role: RoleSpec) -> Agent:
    """The role's agent, from its ``module:Class`` (modules next to the workflow file first)."""
    where = f"{spec.path}: roles.{role.name}.agent"
    cls = import_ref(role.agent, where=where, base_dir=spec.base_dir if spec.path else None)
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise ConfigError(f"{where}: {role.agent} is not an Agent class")
    agent: Agent = cls(role, spec)
    return agent
