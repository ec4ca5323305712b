"""The tau workflow's roles: the user simulator, the assistant (whose tools run in the
task's sandbox) and the reward.

The environment runs as the lease's sandbox *session* (``sandbox_env``): started
with the files once per lease, it keeps the database in memory and answers each
tool call, and the reward's request for the final database hash. A session that
died or hung is started again by the next call and continues from the database
it last saved (every write is saved before its reply), exactly where a process
per call would have continued; the tool turn says so (``meta.session_restarted``).
The call that hit it is a tool error, as a crash or a timeout was before.

The trace is the task's turns, in order: ``user`` and ``assistant`` turns (an
assistant turn that called tools keeps the calls in ``meta.tool_calls``) and
one ``tool`` turn per tool call, whose ``meta`` holds the call's id, name and
arguments, ``ok``, and the sandbox that ran it (``sandbox``: the lease id,
``sandbox_server``), with the call's duration in ``elapsed_s`` (waiting for a sandbox
included) and the session call's own, in the server, in ``meta.exec_s``. Both
speakers' conversations are rebuilt from the turns at every hop.

``task.state`` (the row's ``result``): ``steps`` (messages so far),
``tool_calls``, ``tool_errors``, ``termination`` (user_stop, transfer,
out_of_scope, max_steps, max_errors), then the reward role's ``reward``,
``db_match``, ``communicate_match``, ``missing_info`` and the hashes;
``sandbox_restarts`` when the sandbox was lost and the conversation restarted.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import msgspec

from matrix_p2p.agent import Agent, Context
from matrix_p2p.envelope import Lease, Task, Turn
from matrix_p2p.errors import FailTask
from matrix_p2p.llm.types import ToolCall, ToolCallError
from matrix_p2p.resources.base import ResourceGone
from matrix_p2p.resources.sandbox import Sandbox, restart_trajectory, sandbox
from matrix_p2p.sandbox import NoSession, SessionDied, SessionTimeout

from . import sandbox_env
from .prompts import ENDING_TOKENS, assistant_system_prompt, user_system_prompt
from .retail_db import db_hash
from .retail_tools import openai_schemas
from .reward import evaluate
from .router import ASSISTANT, USER, limits
from .tasks import Task as TauTask
from .tasks import fresh_db, load_tasks

GREETING = "Hi! How can I help you today?"
_TERMINATION = {"stop": "user_stop", "transfer": "transfer", "out_of_scope": "out_of_scope"}
_KEEP_ON_RESTART = ("sandbox_restarts",)


@functools.cache
def _tasks_by_id() -> dict[str, TauTask]:
    return {t.id: t for t in load_tasks()}


@functools.cache
def _schemas() -> list[dict[str, Any]]:
    return openai_schemas()


@functools.cache
def _fresh_hash() -> str:
    return db_hash(fresh_db())


def tau_task(task: Task) -> TauTask:
    """The domain task of an input row: a whole task, or ``{"id": ...}`` of a bundled one."""
    row = task.row
    try:
        if "user_scenario" in row:
            return msgspec.convert(row, TauTask)
        return _tasks_by_id()[str(row["id"])]
    except (KeyError, msgspec.ValidationError) as exc:
        raise FailTask(f"input row is not a tau task: {exc}") from None


def user_view(task: Task, scenario: TauTask) -> list[dict[str, Any]]:
    """The conversation as the customer sees it (roles swapped, tool turns hidden)."""
    msgs: list[dict[str, Any]] = [{"role": "system", "content": user_system_prompt(scenario)},
                                  {"role": "user", "content": GREETING}]
    for t in task.turns:
        if t.role == USER:
            msgs.append({"role": "assistant", "content": t.content})
        elif t.role == ASSISTANT and not t.meta.get("tool_calls"):
            msgs.append({"role": "user", "content": t.content})
    return msgs


def assistant_view(task: Task) -> list[dict[str, Any]]:
    """The conversation as the assistant sees it (OpenAI messages with tool calls)."""
    msgs: list[dict[str, Any]] = [{"role": "system", "content": assistant_system_prompt()},
                                  {"role": "assistant", "content": GREETING}]
    for t in task.turns:
        if t.role == USER:
            msgs.append({"role": "user", "content": t.content})
        elif t.role == ASSISTANT:
            calls = t.meta.get("tool_calls")
            if calls:
                msgs.append({"role": "assistant", "content": t.content or None, "tool_calls": [
                    {"id": c["id"], "type": "function",
                     "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]})
            else:
                msgs.append({"role": "assistant", "content": t.content})
        elif t.role == "tool":
            msgs.append({"role": "tool", "tool_call_id": t.meta.get("tool_call_id", ""),
                         "content": t.content})
    return msgs


def _restart(task: Task, ctx: Context, name: str, exc: ResourceGone) -> None:
    """The sandbox is gone with the database in it: start the conversation over."""
    restart_trajectory(task, ctx, name, str(exc))  # FailTask past the limit
    task.state = {k: v for k, v in task.state.items() if k in _KEEP_ON_RESTART}
    task.turns = []


def _step(task: Task, errors: int = 0) -> None:
    task.state["steps"] = int(task.state.get("steps", 0)) + 1
    if errors:
        task.state["tool_errors"] = int(task.state.get("tool_errors", 0)) + errors


class UserSimulator(Agent):
    """The customer: one message per hop; an ending token ends the conversation."""

    async def handle(self, task: Task, ctx: Context) -> None:
        max_steps, _ = limits(ctx.spec)
        if int(task.state.get("steps", 0)) >= max_steps:
            task.state["termination"] = "max_steps"
            return
        reply = (await ctx.chat(user_view(task, tau_task(task)))).unwrap()
        ctx.say(reply.text)
        _step(task)
        for key, token in ENDING_TOKENS.items():
            if token in reply.text:
                task.state["termination"] = _TERMINATION[key]
                break


class Assistant(Agent):
    """The support agent: its tool loop runs within one hop (see ``router``), each call an
    execution of the environment in the task's sandbox."""

    async def handle(self, task: Task, ctx: Context) -> None:
        box = sandbox(ctx)
        try:
            await self._turn(task, ctx, box)
        except ResourceGone as exc:
            _restart(task, ctx, box.pool.name, exc)

    async def _turn(self, task: Task, ctx: Context, box: Sandbox) -> None:
        max_steps, max_errors = limits(ctx.spec)
        while True:
            if int(task.state.get("steps", 0)) >= max_steps:
                task.state["termination"] = "max_steps"
                return
            reply = (await ctx.chat(assistant_view(task), tools=_schemas(),
                                    tool_choice="auto")).unwrap()
            calls = [{"id": c.id, "name": c.name, "arguments": c.arguments}
                     for c in reply.tool_calls]
            if calls:
                ctx.say(reply.text, tool_calls=calls)
            else:
                ctx.say(reply.text)
            _step(task)
            if not reply.tool_calls:
                return
            for call in reply.tool_calls:
                ok = await self._tool(task, box, call)
                _step(task, errors=0 if ok else 1)
                task.state["tool_calls"] = int(task.state.get("tool_calls", 0)) + 1
                if int(task.state.get("tool_errors", 0)) >= max_errors:
                    task.state["termination"] = "max_errors"
                    return

    async def _tool(self, task: Task, box: Sandbox, call: ToolCall) -> bool:
        """Run one call in the sandbox; append its ``tool`` turn. Returns whether it succeeded."""
        started = time.time()
        lease: Lease | None = None
        meta: dict[str, Any] = {"exec_s": 0.0}
        try:
            arguments = call.parse_arguments()
        except ToolCallError as exc:
            ok, output = False, f"Error: {exc}"  # the model's mistake: nothing runs
        else:
            ok, output, lease, meta = await env_call(task, box, sandbox_env.call(call.name, arguments))
        task.turns.append(Turn(
            role="tool", content=output, hop=task.hop, started_at=started,
            elapsed_s=round(time.time() - started, 6),
            meta={"tool_call_id": call.id, "name": call.name, "arguments": call.arguments,
                  "ok": ok, **meta, "sandbox": lease.ref if lease else None,
                  "sandbox_server": lease.where if lease else None}))
        return ok


async def env_call(task: Task, box: Sandbox, request: dict[str, Any]
                   ) -> tuple[bool, str, Lease, dict[str, Any]]:
    """One request to the task's environment session (set up first if need be): ``ok``, the
    result, the lease, and the call's ``meta`` (``exec_s``; ``session_restarted`` with why,
    when the session had died and was started again for this call)."""
    lease = await ensure_env(task, box)
    try:
        try:
            reply, lease = await box.call(request)
        except NoSession:  # the server lost the session but not the lease: db.json is there
            task.state.pop("env_sandbox", None)
            lease = await ensure_env(task, box)
            reply, lease = await box.call(request)
    except SessionTimeout:
        return False, "Error: the tool timed out", lease, {"exec_s": 0.0}
    except SessionDied as exc:
        return False, f"Error: the environment failed: {exc}", lease, {"exec_s": 0.0}
    meta: dict[str, Any] = {"exec_s": reply.elapsed_s}
    if reply.restarted:
        meta["session_restarted"] = reply.lost
    try:
        result = sandbox_env.reply_result(reply.reply)
    except ValueError as exc:
        return False, f"Error: the environment failed: {exc}", lease, meta
    return result.ok, result.output, lease, meta


async def ensure_env(task: Task, box: Sandbox) -> Lease:
    """The task's sandbox with the environment session in it: the files copied and the
    session started once per lease (answering a ping, so a broken setup fails here)."""
    lease = await box.lease()
    if task.state.get("env_sandbox") == lease.ref:
        return lease
    _, lease = await box.start_session(sandbox_env.session_argv(), files=sandbox_env.files())
    try:
        reply, lease = await box.call(sandbox_env.PING)
        ok, output = sandbox_env.reply_result(reply.reply)[:2]
    except (SessionDied, ValueError) as exc:  # SessionTimeout included
        ok, output = False, str(exc)
    if not ok:
        raise FailTask(f"cannot set up the environment in sandbox {lease.ref}: {output}")
    task.state["env_sandbox"] = lease.ref
    return lease


class Reward(Agent):
    """tau2-style reward from the database left in the sandbox and what the assistant said."""

    async def handle(self, task: Task, ctx: Context) -> None:
        box = sandbox(ctx)
        try:
            final = await self._final_hash(task, box)
        except ResourceGone as exc:
            _restart(task, ctx, box.pool.name, exc)
            return
        said = [t.content for t in task.turns if t.role == ASSISTANT and t.content]
        r = evaluate(tau_task(task), initial_db=fresh_db(), assistant_messages=said,
                     final_db_hash=final)
        task.state.update(reward=r.reward, db_match=r.db_match,
                          communicate_match=r.communicate_match, missing_info=r.missing_info,
                          expected_db_hash=r.expected_db_hash, final_db_hash=final)

    async def _final_hash(self, task: Task, box: Sandbox) -> str:
        if task.state.get("env_sandbox") is None:
            return _fresh_hash()  # no tool ever ran: the database is the bundled one
        ok, output, _, _ = await env_call(task, box, sandbox_env.HASH)
        if not ok:
            raise FailTask(f"cannot read the final database: {output}")
        return output
