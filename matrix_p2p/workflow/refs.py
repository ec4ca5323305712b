"""``module:Name`` references in workflow files (agents, routers), imported.

Resolution order, so that bundled and user code never shadow other packages:
1. a module or package that sits next to the workflow file (``my_agents:Talker``
   with ``my_agents.py`` beside ``wf.yaml``) is loaded from there by path, under
   a private module name derived from the directory, so two workflows with a
   ``my_agents.py`` each do not collide and nothing is added to ``sys.path``;
2. otherwise an ordinary import (installed packages, and the bundled agents
   under their own import name ``matrix_p2p_agents``); an old ``agents.coral``
   reference that imports nothing falls back to ``matrix_p2p_agents.coral``
   with a warning.
A failure is a ``ConfigError`` that names the file and field.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import structlog

from matrix_p2p.errors import ConfigError

log = structlog.get_logger(__name__)

LOCAL_PREFIX = "matrix_p2p_local"


def _local_alias(base_dir: Path, top: str) -> str:
    tag = hashlib.sha256(str(base_dir.resolve()).encode()).hexdigest()[:10]
    return f"{LOCAL_PREFIX}_{tag}_{top}"


def _load_local(base_dir: Path, top: str) -> str | None:
    """Load ``top`` from ``base_dir`` if it is there; the module name it got, else None."""
    file = base_dir / f"{top}.py"
    package = base_dir / top / "__init__.py"
    if package.is_file():
        file, search = package, [str(package.parent)]
    elif file.is_file():
        search = None
    else:
        return None
    alias = _local_alias(base_dir, top)
    if alias not in sys.modules:
        spec = importlib.util.spec_from_file_location(alias, file,
                                                      submodule_search_locations=search)
        if spec is None or spec.loader is None:
            return None
        module = importlib.util.module_from_spec(spec)
        sys.modules[alias] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[alias]
            raise
    return alias


def _import(module_name: str, base_dir: Path | None) -> ModuleType:
    top, _, rest = module_name.partition(".")
    if base_dir is not None:
        alias = _load_local(base_dir, top)
        if alias is not None:
            return importlib.import_module(f"{alias}.{rest}" if rest else alias)
    try:
        return importlib.import_module(module_name)
    except ImportError:
        # workflow files written before the bundled agents got their own import name
        if top != "agents" or not rest:
            raise
        module = importlib.import_module(f"matrix_p2p_agents.{rest}")
    log.warning("workflow.old_agent_reference", ref=module_name,
                hint=f"write matrix_p2p_agents.{rest} (agents.* is another package's name)")
    return module


def import_ref(ref: str, *, where: str, base_dir: Path | None = None) -> Any:
    """Import ``module:Name``; modules next to the workflow file (``base_dir``) first."""
    module_name, _, attr = ref.partition(":")
    try:
        module = _import(module_name, base_dir)
    except ImportError as exc:
        raise ConfigError(f"{where}: cannot import {module_name!r}: {exc}") from None
    except SyntaxError as exc:
        raise ConfigError(f"{where}: {module_name!r} has a syntax error: {exc.filename}:"
                          f"{exc.lineno}: {exc.msg}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{where}: module {module_name!r} has no {attr!r}") from None
