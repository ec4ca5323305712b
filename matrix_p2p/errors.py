"""matrix_p2p's own exceptions. Third-party errors are translated to these at the edge."""

from __future__ import annotations


class MatrixError(Exception):
    """Base class. ``str(exc)`` is a one-line message fit for a user."""


class ConfigError(MatrixError):
    """A workflow file, flag or environment value is wrong. The message names where."""


class BusError(MatrixError):
    """The broker could not be reached or refused an operation."""


class RetryLater(MatrixError):
    """Raised by an agent: hand the task back and try this hop again after ``after_s``."""

    def __init__(self, reason: str, after_s: float = 1.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.after_s = after_s


class FailTask(MatrixError):
    """Raised by an agent: end the task as failed with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
