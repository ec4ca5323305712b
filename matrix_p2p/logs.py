"""structlog setup: readable on a terminal, one JSON object per line otherwise."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog

from matrix_p2p.errors import ConfigError

LEVELS = ("debug", "info", "warning", "error")


class _ClearLine:
    """A stderr writer that first clears a progress line drawn in place (TTY only)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        # print() writes the newline on its own: clearing before it would erase the line
        if text == "\n":
            return self.stream.write(text)
        return self.stream.write("\r\x1b[K" + text)

    def flush(self) -> None:
        self.stream.flush()


def setup(level: str | None = None, *, json_logs: bool | None = None,
          stream: TextIO | None = None) -> None:
    level = (level or os.environ.get("MX_LOG_LEVEL") or "info").lower()
    if level not in LEVELS:
        raise ConfigError(f"--log-level: expected one of {', '.join(LEVELS)}, got {level!r}")
    stream = stream or sys.stderr
    tty = stream.isatty()
    if json_logs is None:
        json_logs = os.environ.get("MX_LOG_JSON", "") not in ("", "0") or not tty
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json_logs:
        processors += [
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(),
        ]
        out: Any = stream
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=tty))
        out = _ClearLine(stream) if tty else stream
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
