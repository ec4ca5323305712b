"""structlog setup. The CLI (``setup``): readable on a terminal, one JSON object per line
otherwise. The Python API (``library``, ``showing``): a library's manners, quiet unless the
application configures logging."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any, TextIO

import structlog

from matrix_p2p.errors import ConfigError

LEVELS = ("debug", "info", "warning", "error")
PACKAGE_LOGGER = "matrix_p2p"  # every logger of the package is under it (NullHandler there)


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


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written, not when logging was set up (a
    test runner or an application may replace it, and close the one it replaced)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def setup(level: str | None = None, *, json_logs: bool | None = None,
          stream: TextIO | None = None) -> None:
    level = (level or os.environ.get("MX_LOG_LEVEL") or "info").lower()
    if level not in LEVELS:
        raise ConfigError(f"--log-level: expected one of {', '.join(LEVELS)}, got {level!r}")
    out_stream: Any = stream or _Stderr()
    tty = out_stream.isatty()
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
        out: Any = out_stream
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=tty))
        out = _ClearLine(out_stream) if tty else out_stream
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


_logfmt = structlog.processors.LogfmtRenderer()


def _to_stdlib(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog's event as a standard record: the message reads ``event key=value ...``;
    the fields also ride on the record (``record.mx_event``, ``record.mx_fields``)."""
    exc_info = event_dict.pop("exc_info", None)
    event = str(event_dict.pop("event", ""))
    fields = dict(event_dict)
    text = event + (" " + _logfmt(_logger, _method, event_dict) if fields else "")
    return (text,), {"exc_info": exc_info, "extra": {"mx_event": event, "mx_fields": fields}}


def library() -> None:
    """Log as a library should: matrix_p2p's events become standard ``logging`` records
    under the ``matrix_p2p`` logger (which has a ``NullHandler``), so nothing is printed
    unless the application configures logging (``logging.basicConfig(level="INFO")``, a
    handler on ``matrix_p2p``, or ``log_level=`` on the API's calls).

    Called by the Python API (``api.py``), never by the CLI. An application that
    configured structlog itself keeps its configuration: matrix_p2p's events follow it.
    """
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,  # first: a disabled level costs one check
            structlog.contextvars.merge_contextvars,
            _to_stdlib,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )


@contextlib.contextmanager
def showing(level: str | None, stream: TextIO | None = None) -> Iterator[None]:
    """While the block runs, matrix_p2p's events at ``level`` and above go to ``stream``
    (stderr): the API's ``log_level=``. None: nothing changes."""
    if level is None:
        yield
        return
    if not isinstance(level, str) or level.lower() not in LEVELS:
        raise ConfigError(f"log_level: expected one of {', '.join(LEVELS)}, got {level!r}")
    number = getattr(logging, level.upper())
    logger = logging.getLogger(PACKAGE_LOGGER)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setLevel(number)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    previous = logger.level
    if logger.getEffectiveLevel() > number:
        logger.setLevel(number)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
