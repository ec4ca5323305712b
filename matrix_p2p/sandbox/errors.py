"""The sandbox service's errors, server side and client side."""

from __future__ import annotations

from matrix_p2p.errors import MatrixError


class SandboxError(MatrixError):
    """A sandbox call failed. ``status`` is the HTTP status when the server answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SandboxUnavailable(SandboxError):
    """No sandbox could be had: the pool stayed exhausted (or braked) until the
    deadline, the server is unreachable, or its circuit breaker is open.
    The task may retry later; nothing it held was lost."""

    def __init__(self, message: str, status: int | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after_s = retry_after_s


class LeaseGone(SandboxError):
    """The server does not know this lease (it expired and was reclaimed, was
    released, or the server restarted): the sandbox's files are gone, so the
    task should restart its trajectory on a fresh lease."""


class BadRequest(SandboxError):
    """A request field is missing or wrong. ``field`` names it (``$.timeout_s`` style, without ``$.``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, 400)
        self.field = field


class UnknownLease(SandboxError):
    """Server side: no such lease (maps to 404)."""

    def __init__(self, lease_id: str) -> None:
        super().__init__(f"unknown lease {lease_id!r} (expired, released, or the server restarted)", 404)
        self.lease_id = lease_id


class SessionError(SandboxError):
    """A lease's session could not answer a call (HTTP 409 with ``session`` naming why).

    ``kind`` is ``none`` (no session was started on this lease), ``died`` (its
    process ended, or broke the one-line-per-request protocol) or ``timeout``
    (it did not answer in time and was killed). After ``died`` or ``timeout``
    the next call starts the program again, with none of the old process's
    in-memory state: its reply says ``restarted``. The lease and its files are
    intact; a gone lease is ``LeaseGone`` / ``UnknownLease`` instead.
    """

    kind = "died"

    def __init__(self, message: str) -> None:
        super().__init__(message, 409)


class NoSession(SessionError):
    """No session was started on this lease (``/sessions/start`` first)."""

    kind = "none"


class SessionDied(SessionError):
    """The session's process ended during the call (or wrote something that is not
    one JSON line); the message has its exit status and the tail of its stderr."""

    kind = "died"


class SessionTimeout(SessionDied):
    """The call got no reply within its timeout: the session's process was killed."""

    kind = "timeout"


SESSION_ERRORS: dict[str, type[SessionError]] = {
    cls.kind: cls for cls in (NoSession, SessionDied, SessionTimeout)
}
