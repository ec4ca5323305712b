"""A workflow's ``export:`` section as a ``View``: roles named, texts made callable.

A ``call: module:function`` source is imported here (like agents: next to the
workflow file first). A function without parameters is called once, now; one
that takes a parameter is called per row with the row's ``input``. A failure
to import, or of a call made now, is a one-line ``ConfigError`` naming the
field; a per-row call that raises is that row's ``Skip`` reason.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from matrix_p2p.errors import ConfigError, MatrixError
from matrix_p2p.export.expr import lookup
from matrix_p2p.export.views import Row, Skip, Text, View
from matrix_p2p.workflow.refs import import_ref
from matrix_p2p.workflow.spec import TextSource, WorkflowSpec

# what a per-row function raises for a row it cannot present (FailTask is a MatrixError)
_ROW_ERRORS = (MatrixError, LookupError, TypeError, ValueError, AttributeError)


def view_of(spec: WorkflowSpec) -> View:
    """The export view the workflow declares; a ``ConfigError`` if it declares none."""
    ex = spec.export
    if ex is None:
        raise ConfigError(f"{spec.path or spec.name}: declares no `export:` section (which role "
                          "is the assistant, which are the user; see docs/agents.md)")
    texts: dict[str, Text | None] = {}
    for name in ("system", "greeting", "prompt", "response"):
        src: TextSource | None = getattr(ex, name)
        texts[name] = _text(src, f"export.{name}", spec) if src is not None else None
    return View(assistant=ex.assistant, user=frozenset(ex.user), tool_role=ex.tool_role,
                system=texts["system"], greeting=texts["greeting"], prompt=texts["prompt"],
                response=texts["response"], tools=_tools(ex.tools, spec))


def _where(spec: WorkflowSpec, field: str) -> str:
    return f"{spec.path or spec.name}: {field}"


def _import(ref: str, field: str, spec: WorkflowSpec) -> Any:
    return import_ref(ref, where=_where(spec, field), base_dir=spec.base_dir if spec.path else None)


def _text(src: TextSource, where: str, spec: WorkflowSpec) -> Text:
    kind = src.kind
    if kind in ("role_system", "role_prompt"):
        role = str(src.role_system or src.role_prompt)
        value = spec.roles[role].system if kind == "role_system" else spec.roles[role].prompt
        if not value.strip():
            what = "system" if kind == "role_system" else "prompt"
            raise ConfigError(f"{_where(spec, where + '.' + kind)}: role {role!r} has no {what} text")
        return lambda row: value
    if kind == "text":
        text = str(src.text)
        return lambda row: text
    if kind == "field":
        field = str(src.field)
        path = tuple(field.split("."))
        return lambda row: _as_text(lookup(row, path), field)
    return _call(str(src.call), f"{where}.call", spec)


def _as_text(value: Any, field: str) -> str:
    if value is None:
        raise Skip(f"{field} is missing")
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise Skip(f"{field} is not a text")


def _takes_an_argument(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
               for p in params)


def _call(ref: str, where: str, spec: WorkflowSpec) -> Text:
    fn = _import(ref, where, spec)
    if not callable(fn):
        raise ConfigError(f"{_where(spec, where)}: {ref!r} is not a function")
    if not _takes_an_argument(fn):
        try:
            value = fn()
        except _ROW_ERRORS as exc:
            raise ConfigError(f"{_where(spec, where)}: {ref} raised {type(exc).__name__}: "
                              f"{exc}") from None
        if not isinstance(value, str):
            raise ConfigError(f"{_where(spec, where)}: {ref} returned {type(value).__name__}, "
                              "not a text")
        return lambda row: value

    def per_row(row: Row) -> str:
        try:
            value = fn(row.get("input") or {})
        except _ROW_ERRORS as exc:
            raise Skip(f"{where}: {type(exc).__name__}: {exc}") from None
        if not isinstance(value, str):
            raise Skip(f"{where}: returned {type(value).__name__}, not a text")
        return value

    return per_row


def _tools(ref: str | None, spec: WorkflowSpec) -> tuple[dict[str, Any], ...]:
    if ref is None:
        return ()
    fn = _import(ref, "export.tools", spec)
    try:
        value = fn() if callable(fn) else fn
    except _ROW_ERRORS as exc:
        raise ConfigError(f"{_where(spec, 'export.tools')}: {ref} raised {type(exc).__name__}: "
                          f"{exc}") from None
    if not isinstance(value, list | tuple) or not all(isinstance(t, dict) for t in value):
        raise ConfigError(f"{_where(spec, 'export.tools')}: {ref} must give a list of tool "
                          "schemas (OpenAI's {type: function, function: {...}})")
    return tuple(value)
