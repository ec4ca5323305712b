"""The plain-Python steps: language filter, quality heuristics, exact dedup. No LLM.

Each agent reads the row's document (``options.text_field``, default
``text``), writes its verdict into ``task.state`` (see ``matrix_p2p_agents.nr``) and
records an empty turn whose ``meta`` holds the verdict, so the row's
timings show the step's cost. Documents over ``THREAD_CHARS`` are examined
in a thread: a 16 MB page takes about a second of CPU, and the event loop
must keep sending the other tasks' heartbeats meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from matrix_p2p_agents.nr import dedup, heuristics, langid
from matrix_p2p_agents.nr.common import document, drop, keep

from matrix_p2p.agent import Agent, Context
from matrix_p2p.envelope import Task
from matrix_p2p.errors import ConfigError
from matrix_p2p.workflow.spec import RoleSpec, WorkflowSpec

THREAD_CHARS = 256 * 1024
_T = TypeVar("_T")


async def off_loop(fn: Callable[..., _T], text: str, *args: Any) -> _T:
    """``fn(text, *args)``, in a worker thread when ``text`` is large."""
    if len(text) > THREAD_CHARS:
        return await asyncio.to_thread(fn, text, *args)
    return fn(text, *args)


def _bad_option(role: RoleSpec, spec: WorkflowSpec, msg: str) -> ConfigError:
    return ConfigError(f"{spec.path}: roles.{role.name}.options: {msg}")


class LanguageFilter(Agent):
    """Keeps documents whose language is in ``options.keep`` (ISO 639-1 codes).

    Options: ``keep`` (default ``[en]``), ``detect`` (the candidate languages,
    default ``langid.DEFAULT_LANGUAGES``; ``keep`` is added to them),
    ``accuracy`` (``low``: 35 MB, fine for prose; ``high``: 300 MB, right on
    short fragments such as recipe lists). Reasons: ``lang:<code>``, or
    ``lang:unknown`` when lingua is unsure.
    """

    def __init__(self, role: RoleSpec, spec: WorkflowSpec) -> None:
        super().__init__(role, spec)
        opts = role.options
        self.keep = tuple(str(c).lower() for c in opts.get("keep", ["en"]))
        detect = [str(c).lower() for c in opts.get("detect", langid.DEFAULT_LANGUAGES)]
        self.detect = tuple(dict.fromkeys([*detect, *self.keep]))
        self.accuracy = str(opts.get("accuracy", "low"))
        self.field = str(opts.get("text_field", "text"))
        try:
            for code in self.detect:
                langid.language_of(code)
        except ValueError as exc:
            raise _bad_option(role, spec, str(exc)) from None
        if self.accuracy not in ("low", "high"):
            raise _bad_option(role, spec, f"accuracy must be 'low' or 'high', got {self.accuracy!r}")

    async def setup(self) -> None:
        # build (and preload) the models before the first task, not inside a hop's deadline
        await asyncio.to_thread(langid.detector, self.detect, self.accuracy)

    async def handle(self, task: Task, ctx: Context) -> None:
        text = document(task, self.field)
        lang = await off_loop(langid.detect, text, self.detect, self.accuracy)
        task.state["lang"] = lang
        if lang in self.keep:
            keep(task)
        else:
            drop(task, f"lang:{lang or 'unknown'}")
        ctx.say("", lang=lang)


class QualityFilter(Agent):
    """Gopher/C4-style rules (``heuristics.check``); ``options`` override its thresholds."""

    def __init__(self, role: RoleSpec, spec: WorkflowSpec) -> None:
        super().__init__(role, spec)
        opts = dict(role.options)
        self.field = str(opts.pop("text_field", "text"))
        try:
            self.config = heuristics.config_from(opts)
        except msgspec.ValidationError as exc:
            raise _bad_option(role, spec, str(exc)) from None

    async def handle(self, task: Task, ctx: Context) -> None:
        text = document(task, self.field)
        reason, signals = await off_loop(heuristics.check, text, self.config)
        task.state["signals"] = signals
        if reason is None:
            keep(task)
        else:
            drop(task, reason)
        ctx.say("", verdict=reason or "pass")


class ExactDedup(Agent):
    """Drops a document whose normalized text an earlier task already claimed.

    ``options.scope``: ``fleet`` (default) claims keys in the runtime's seen-set
    (``ctx.seen``: a JetStream KV bucket shared by every worker; outside a
    worker, this process's); ``process`` claims them in this worker process
    only (``dedup.LocalSeenSet``: duplicates handled by other processes slip
    through). ``task`` only records ``dedup_key`` and drops nothing. Keys are
    claimed per trial, so the trials of one document are not each other's
    duplicates. Reason: ``duplicate`` (``duplicate_of`` names the owner).
    """

    def __init__(self, role: RoleSpec, spec: WorkflowSpec,
                 seen: dedup.SeenSet | None = None) -> None:
        super().__init__(role, spec)
        self.field = str(role.options.get("text_field", "text"))
        self.scope = str(role.options.get("scope", "fleet"))
        if self.scope not in ("fleet", "process", "task"):
            raise _bad_option(role, spec,
                              f"scope must be 'fleet', 'process' or 'task', got {self.scope!r}")
        self.seen: dedup.SeenSet = seen or dedup.LocalSeenSet()

    async def handle(self, task: Task, ctx: Context) -> None:
        key = await off_loop(dedup.dedup_key, document(task, self.field))
        task.state["dedup_key"] = key
        owner = task.id
        if self.scope != "task":
            seen = ctx.seen if self.scope == "fleet" and ctx.seen is not None else self.seen
            owner = await seen.claim(f"{key}.t{task.trial}", task.id)  # a valid NATS KV key
        dup = dedup.duplicate_of(owner, task.id)
        if dup is None:
            keep(task)
        else:
            task.state["duplicate_of"] = dup
            drop(task, "duplicate")
        ctx.say("", duplicate_of=dup)
