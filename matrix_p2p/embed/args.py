"""The Python API's arguments, checked before any work starts. Pure.

A value of the wrong type is a ``TypeError``, a wrong value a ``ConfigError``;
either way one line that names the argument (``llm_urls[1]: expected a URL
string, got int``), as the CLI names its flags.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TypeVar

from matrix_p2p.bus import ConnectOptions
from matrix_p2p.errors import ConfigError
from matrix_p2p.workflow.spec import WorkflowSpec

_T = TypeVar("_T", bound=str)


def _kind(value: object) -> str:
    return type(value).__name__


def workflow(value: object) -> str | Path | WorkflowSpec:
    if not isinstance(value, str | os.PathLike | WorkflowSpec):
        raise TypeError(f"workflow: expected a path, a bundled name or a WorkflowSpec, "
                        f"got {_kind(value)}")
    return value if isinstance(value, str | WorkflowSpec) else Path(value)


def urls(name: str, value: object) -> list[str]:
    """One URL (a string) or an iterable of them; each an http(s) URL."""
    if isinstance(value, str):
        value = [value]  # one URL, not one per character
    if isinstance(value, bytes | Mapping) or not isinstance(value, Iterable):
        raise TypeError(f"{name}: expected a URL or a list of URLs, got {_kind(value)}")
    out: list[str] = []
    for i, url in enumerate(value):
        if not isinstance(url, str):
            raise TypeError(f"{name}[{i}]: expected a URL string, got {_kind(url)}")
        url = url.strip()
        if not url.startswith(("http://", "https://")) or "," in url or " " in url:
            raise ConfigError(f"{name}[{i}]: {url!r} is not one http:// or https:// URL")
        out.append(url)
    return out


def count(name: str, value: object, *, minimum: int) -> int | None:
    """None, or an int of at least ``minimum`` (a bool is not a count)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {_kind(value)}")
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
    return value


def required_count(name: str, value: object, *, minimum: int) -> int:
    got = count(name, value, minimum=minimum)
    if got is None:
        raise TypeError(f"{name}: expected an int, got None")
    return got


def port(name: str, value: object) -> int | None:
    got = count(name, value, minimum=0)
    if got is not None and got > 65535:
        raise ConfigError(f"{name}: must be at most 65535, got {got}")
    return got


def flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {_kind(value)}")
    return value


def choice(name: str, value: object, choices: tuple[_T, ...]) -> _T:
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a string, got {_kind(value)}")
    for c in choices:
        if value == c:
            return c
    raise ConfigError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


def path(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise TypeError(f"{name}: expected a path, got {_kind(value)}")
    text = os.fspath(value)
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{name}: expected a non-empty path, got {value!r}")
    return text


def host(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name}: expected a host name or address, got {value!r}")
    return value


def nats(value: object, name: str) -> ConnectOptions | None:
    """None (an embedded broker), a URL, or ``ConnectOptions``; ``name`` names the
    connection for a URL."""
    if value is None or isinstance(value, ConnectOptions):
        return value
    if not isinstance(value, str):
        raise TypeError(f"nats: expected a URL or ConnectOptions, got {_kind(value)}")
    if not value.strip():
        raise ConfigError("nats: expected a URL such as 'nats://127.0.0.1:4222', got ''")
    return ConnectOptions(url=value.strip(), name=name)


def event(name: str, value: object) -> asyncio.Event | None:
    if value is not None and not isinstance(value, asyncio.Event):
        raise TypeError(f"{name}: expected an asyncio.Event, got {_kind(value)}")
    return value


def strings(name: str, value: object) -> list[str] | None:
    """None, or a list of names (one name: a string)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, bytes | Mapping) or not isinstance(value, Iterable):
        raise TypeError(f"{name}: expected a list of names, got {_kind(value)}")
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise TypeError(f"{name}[{i}]: expected a string, got {_kind(item)}")
        out.append(item)
    return out


def timeout(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name}: expected seconds (a number), got {_kind(value)}")
    if not value > 0:  # NaN too
        raise ConfigError(f"{name}: must be positive, got {value}")
    return float(value)
