"""The code version of a workflow: a hash of its file and its agents' and router's code.

It travels in every envelope and row (``Task.code_version``, next to the
user's own ``version:``). A store remembers the versions its tasks were
submitted under; submitting under a different one is refused until the user
says what they want (``resolve``):

- ``--reuse``: keep the results already there; new tasks get the new hash.
- ``--new-version``: start fresh rows under this version, a separate id
  namespace (``<id>~v<hash>``): nothing of the old version is skipped or kept
  in the output.
"""

from __future__ import annotations

import hashlib
import inspect
import re
import sys
from pathlib import Path
from typing import Literal

import msgspec

from matrix_p2p.bus import Bus
from matrix_p2p.errors import ConfigError
from matrix_p2p.workflow.refs import import_ref
from matrix_p2p.workflow.spec import PythonRouting, WorkflowSpec

Mode = Literal["check", "reuse", "new"]
_NS_RE = re.compile(r"~v(?P<ns>[0-9a-f]{8})(?=~|/|$)")  # "/": a fan-out child, its parent's


def code_hash(spec: WorkflowSpec) -> str:
    """sha256 (12 hex digits) over the workflow file's bytes (``spec.digest``) and the
    source bytes of the modules its ``module:Class`` refs name (agents, router)."""
    h = hashlib.sha256()
    # a spec built in Python has no file: its own encoding stands in for the file's bytes
    h.update(spec.digest.encode() if spec.digest else msgspec.json.encode(spec))
    refs = {role.agent for role in spec.roles.values()}
    if isinstance(spec.routing, PythonRouting):
        refs.add(spec.routing.router)
    base = spec.base_dir if spec.path else None
    for ref in sorted(refs):
        obj = import_ref(ref, where=f"{spec.path}: {ref}", base_dir=base)
        module = sys.modules.get(getattr(obj, "__module__", ""))
        source = inspect.getsourcefile(module) if module is not None else None
        h.update(ref.encode())
        if source and Path(source).is_file():
            h.update(Path(source).read_bytes())
    return h.hexdigest()[:12]


def namespace_suffix(ns: str) -> str:
    return f"~v{ns}" if ns else ""


def namespace_of(task_id: str) -> str:
    """The version namespace of an id (``""`` for the original one)."""
    m = _NS_RE.search(task_id)
    return m["ns"] if m else ""


async def current_namespace(bus: Bus, bucket: str, digest: str) -> str:
    """The id namespace ``resolve`` gives this code version on this store, read only
    (a sink must not record versions)."""
    kv = await bus.key_value(bucket)
    return digest[:8] if await kv.exists(f"_fresh.{digest}") else ""


async def resolve(bus: Bus, bucket: str, spec: WorkflowSpec, digest: str, mode: Mode, *,
                  replicas: int | None = None) -> str:
    """The id namespace to submit under (``""`` or 8 hex digits), recording ``digest``.

    Error handling: a changed workflow with ``mode="check"`` is a one-line
    ``ConfigError`` that names both ways forward; bus errors propagate.
    """
    kv = await bus.key_value(bucket, replicas=replicas)
    fresh = f"_fresh.{digest}"
    if mode == "new":
        await kv.create(f"_code.{digest}")
        await kv.create(fresh)
        await kv.create("_code")
        return digest[:8]
    if await kv.exists(f"_code.{digest}"):
        return digest[:8] if await kv.exists(fresh) else ""
    if await kv.create("_code") or mode == "reuse":
        await kv.create(f"_code.{digest}")
        return ""
    raise ConfigError(
        f"{spec.path}: the workflow or its agents' code changed since this store's tasks were "
        f"submitted (code version now {digest}): pass --new-version to start fresh rows under "
        "this version, or --reuse to keep the old results")
