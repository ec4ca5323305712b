"""The rules a workflow file keeps beyond its field types: names, limits, model settings,
sandbox sizes and summary figures, each a one-line ``ConfigError`` naming the field."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NoReturn

from matrix_p2p.errors import ConfigError
from matrix_p2p.workflow.spec import (
    ENV_NAME_RE,
    FIGURE_KINDS,
    NAME_RE,
    REF_RE,
    RESERVED_BODY_KEYS,
    ROW_FIELDS,
    TEXT_KINDS,
    AbortOnFailures,
    CycleRouting,
    ExportSpec,
    Figure,
    LLMResource,
    LLMSettings,
    TextSource,
    WorkflowSpec,
)


def check(spec: WorkflowSpec) -> None:
    """The rules a valid file keeps beyond its types. Raises ``ConfigError`` naming the
    file and the field."""
    def fail(field: str, msg: str) -> None:
        raise ConfigError(f"{spec.path}: {field}: {msg}")

    if not NAME_RE.match(spec.name):
        fail("name", f"{spec.name!r} must be 1-64 letters, digits, '_' or '-'")
    if not NAME_RE.match(spec.subject_prefix):
        fail("subject_prefix", f"{spec.subject_prefix!r} must be letters, digits, '_' or '-'")
    if not spec.roles:
        fail("roles", "at least one role is required")
    for name, role in spec.roles.items():
        if not NAME_RE.match(name):
            fail(f"roles.{name}", "role names must be 1-64 letters, digits, '_' or '-'")
        if not REF_RE.match(role.agent):
            fail(f"roles.{name}.agent", f"{role.agent!r} is not of the form 'module:Class'")
        if role.concurrency < 1:
            fail(f"roles.{name}.concurrency", "must be at least 1")
        if role.max_ack_pending < 1:
            fail(f"roles.{name}.max_ack_pending", "must be at least 1")
        if role.hop_timeout_s <= 0:
            fail(f"roles.{name}.hop_timeout_s", "must be positive")
        if role.llm is not None and role.llm not in spec.resources.llm and role.llm != "default":
            known = ", ".join(sorted(spec.resources.llm)) or "none defined"
            fail(f"roles.{name}.llm", f"unknown LLM resource {role.llm!r} (known: {known})")
        for i, res_name in enumerate(role.resources):
            if res_name not in spec.resources.sandbox:
                known = ", ".join(sorted(spec.resources.sandbox)) or "none defined"
                fail(f"roles.{name}.resources[{i}]",
                     f"unknown resource {res_name!r} (known under resources.sandbox: {known})")
    routing = spec.routing
    if isinstance(routing, CycleRouting):
        if not routing.roles:
            fail("routing.roles", "at least one role is required")
        for i, role_name in enumerate(routing.roles):
            if role_name not in spec.roles:
                fail(f"routing.roles[{i}]", f"unknown role {role_name!r}")
        if routing.max_turns < 1:
            fail("routing.max_turns", "must be at least 1")
    elif not REF_RE.match(routing.router):
        fail("routing.router", f"{routing.router!r} is not of the form 'module:Class'")
    if spec.source.path is not None and spec.source.hf is not None:
        fail("source", "give either `path` or `hf`, not both")
    if spec.trials < 1:
        fail("trials", "must be at least 1")
    lim = spec.limits
    if lim.max_deliveries < 1:
        fail("limits.max_deliveries", "must be at least 1")
    if lim.ack_wait_s < 1:
        fail("limits.ack_wait_s", "must be at least 1 second")
    if lim.max_inflight < 1:
        fail("limits.max_inflight", "must be at least 1")
    if lim.offload_bytes is not None and lim.offload_bytes < 1024:
        fail("limits.offload_bytes", "must be at least 1024 (or null: never offload)")
    abort = lim.abort_on_failures
    if isinstance(abort, int) and abort != 0:
        fail("limits.abort_on_failures", "give {first: N, share: S}, or 0 or null to never stop")
    if isinstance(abort, AbortOnFailures):
        if abort.first < 0:
            fail("limits.abort_on_failures.first", "must be at least 0 (0: never stop)")
        if not 0 < abort.share <= 1:
            fail("limits.abort_on_failures.share", f"must be in (0, 1], got {abort.share}")
    for rname, res in spec.resources.llm.items():
        _check_model_settings(res, f"resources.llm.{rname}", fail)
    for name, role in spec.roles.items():
        if role.llm_settings is not None:
            if role.llm is None:
                fail(f"roles.{name}.llm_settings", "the role has no LLM (llm: null)")
            _check_model_settings(role.llm_settings, f"roles.{name}.llm_settings", fail)
    for rname, sbx in spec.resources.sandbox.items():
        where = f"resources.sandbox.{rname}"
        if not NAME_RE.match(rname):
            fail(where, "resource names must be 1-64 letters, digits, '_' or '-'")
        for field in ("pool", "memory_mb", "cpu_s"):
            if getattr(sbx, field) < 1:
                fail(f"{where}.{field}", "must be at least 1")
        for field in ("ttl_s", "timeout_s", "acquire_timeout_s"):
            if getattr(sbx, field) <= 0:
                fail(f"{where}.{field}", "must be positive")
        if sbx.max_restarts < 0:
            fail(f"{where}.max_restarts", "must be at least 0")
    _check_figures(spec.summary, spec.path)
    if spec.export is not None:
        _check_export(spec.export, spec, fail)


_FIELD_RE = re.compile(r"^[^.\s]+(\.[^.\s]+)*$")


def _check_figures(figures: list[Figure], path: str) -> None:
    def fail(field: str, msg: str) -> NoReturn:
        raise ConfigError(f"{path}: {field}: {msg}")

    seen: dict[str, str] = {}  # label -> kind, of the figures before this one
    for i, fig in enumerate(figures):
        where = f"summary[{i}]"
        kinds = [k for k in FIGURE_KINDS if getattr(fig, k) is not None]
        if len(kinds) != 1:
            fail(where, f"give exactly one of {', '.join(FIGURE_KINDS)} (got "
                        f"{', '.join(kinds) or 'none'})")
        kind = kinds[0]
        if not fig.label.strip():
            fail(f"{where}.label", "must not be empty")
        if fig.label in seen:
            fail(f"{where}.label", f"{fig.label!r} is the label of an earlier figure")
        if fig.equals is not None and kind not in ("rate", "count"):
            fail(f"{where}.equals", f"only for rate and count, not {kind}")
        if fig.ratio is not None:
            if len(fig.ratio) != 2:
                fail(f"{where}.ratio", "give two labels of earlier figures: [A, B] for A / B")
            for j, label in enumerate(fig.ratio):
                if seen.get(label) in (None, "counts"):
                    fail(f"{where}.ratio[{j}]", f"{label!r} is not the label of an earlier "
                         "figure with one number (mean, rate, count, distinct or ratio)")
        else:
            problem = _field_problem(str(getattr(fig, kind)))
            if problem:
                fail(f"{where}.{kind}", problem)
        seen[fig.label] = kind


def _field_problem(field: str) -> str | None:
    """What is wrong with a dotted path into a row, or None."""
    if not _FIELD_RE.match(field):
        return f"{field!r} is not a dotted path (like result.reward)"
    if field.split(".", 1)[0] not in ROW_FIELDS:
        return (f"{field!r} does not start with a row field (one of {', '.join(ROW_FIELDS)}; "
                "an agent's state is under result.)")
    return None


def _check_export(ex: ExportSpec, spec: WorkflowSpec, fail: Callable[[str, str], None]) -> None:
    roles = ", ".join(spec.roles)
    if (ex.assistant is None) == (ex.response is None):
        fail("export", "give `assistant` (the role whose turns are the answers) or `response` "
             "(one answer from the row), not " + ("both" if ex.assistant else "neither"))
    if ex.assistant is not None and ex.assistant not in spec.roles:
        fail("export.assistant", f"unknown role {ex.assistant!r} (roles: {roles})")
    if ex.response is not None:
        if ex.user:
            fail("export.user", "a single-turn export (`response`) has no user turns")
        if ex.prompt is None:
            fail("export.prompt", "a single-turn export (`response`) needs the question")
    for i, name in enumerate(ex.user):
        if name not in spec.roles:
            fail(f"export.user[{i}]", f"unknown role {name!r} (roles: {roles})")
        if name == ex.assistant:
            fail(f"export.user[{i}]", f"{name!r} is the assistant")
    if not NAME_RE.match(ex.tool_role):
        fail("export.tool_role", "must be 1-64 letters, digits, '_' or '-'")
    if ex.tool_role == ex.assistant or ex.tool_role in ex.user:
        fail("export.tool_role", f"{ex.tool_role!r} is the assistant or a user role")
    if ex.tools is not None and not REF_RE.match(ex.tools):
        fail("export.tools", f"{ex.tools!r} is not of the form 'module:function'")
    for name in ("system", "greeting", "prompt", "response"):
        src = getattr(ex, name)
        if src is not None:
            _check_text(src, f"export.{name}", spec, fail)


def _check_text(src: TextSource, where: str, spec: WorkflowSpec,
                fail: Callable[[str, str], None]) -> None:
    kinds = [k for k in TEXT_KINDS if getattr(src, k) is not None]
    if len(kinds) != 1:
        fail(where, f"give exactly one of {', '.join(TEXT_KINDS)} (got {', '.join(kinds) or 'none'})")
    kind = kinds[0]
    value = str(getattr(src, kind))
    if kind in ("role_system", "role_prompt") and value not in spec.roles:
        fail(f"{where}.{kind}", f"unknown role {value!r} (roles: {', '.join(spec.roles)})")
    if kind == "field" and (problem := _field_problem(value)):
        fail(f"{where}.field", problem)
    if kind == "call" and not REF_RE.match(value):
        fail(f"{where}.call", f"{value!r} is not of the form 'module:function'")


def _check_model_settings(s: LLMResource | LLMSettings, where: str,
                          fail: Callable[[str, str], None]) -> None:
    if s.max_tokens is not None and s.max_tokens < 1:
        fail(f"{where}.max_tokens", "must be at least 1")
    if s.temperature is not None and not s.temperature >= 0:  # NaN too
        fail(f"{where}.temperature", f"must be at least 0, got {s.temperature}")
    if s.top_p is not None and not 0 < s.top_p <= 1:
        fail(f"{where}.top_p", f"must be in (0, 1], got {s.top_p}")
    if s.model is not None and not s.model.strip():
        fail(f"{where}.model", "must not be empty (leave it out: the server's first model)")
    # never echo the value: a key pasted here by mistake must not reach a log
    if s.api_key_env is not None and not ENV_NAME_RE.match(s.api_key_env):
        fail(f"{where}.api_key_env", "must be the name of an environment variable (letters, "
             "digits, '_'), not the key itself")
    stops = [s.stop] if isinstance(s.stop, str) else s.stop or []
    for i, stop in enumerate(stops):
        if not stop:
            fail(f"{where}.stop" + (f"[{i}]" if isinstance(s.stop, list) else ""),
                 "must not be an empty string")
    for key in s.extra_body:
        if key in RESERVED_BODY_KEYS:
            how = (f"set `{key}` itself, not in extra_body" if hasattr(s, key)
                   else "the runtime sets it")
            fail(f"{where}.extra_body.{key}", how)
