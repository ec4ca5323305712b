"""The HTTP/JSON wire format of the sandbox service: request structs, their checks, error bodies.

Our names and Matrix's container-API names are both accepted: ``lease`` or
``container_id``; ``argv`` (a list) or ``cmd`` (a string run by ``/bin/sh
-c``, or a list); ``timeout_s`` or ``timeout``. Unknown fields are ignored
(a fleet runs mixed versions). A bad field is a ``BadRequest`` naming it.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from matrix_p2p.sandbox.errors import BadRequest

MAX_WAIT_S = 300.0  # longest an /acquire may wait for a free sandbox
T = TypeVar("T")


class AcquireRequest(msgspec.Struct, kw_only=True):
    task_id: str = ""
    ttl_s: float | None = None
    wait_s: float | None = None  # wait this long for a free sandbox before a 503
    # Matrix's container API: ``timeout`` is how long to wait for a container;
    # ``image``/``executable``/``run_args`` name an Apptainer image, which a
    # bubblewrap pool cannot honour: every sandbox is the host's /usr.
    timeout: float | None = None
    image: str | None = None
    executable: str | None = None
    run_args: list[str] | None = None


class LeaseRequest(msgspec.Struct, kw_only=True):
    """Body of /renew and /release."""

    lease: str | None = None
    container_id: str | None = None
    ttl_s: float | None = None


class ExecuteRequest(msgspec.Struct, kw_only=True):
    lease: str | None = None
    container_id: str | None = None
    argv: list[str] | None = None
    cmd: str | list[str] | None = None
    stdin: str | None = None
    timeout_s: float | None = None
    timeout: float | None = None
    cwd: str | None = None
    env: dict[str, str] | None = None
    files: dict[str, str] | None = None
    forward_env: list[str] | None = None


class SessionStartRequest(msgspec.Struct, kw_only=True):
    """Body of /sessions/start: the program (``argv`` or ``cmd``), its ``env`` and ``cwd``,
    and ``files`` written into the work dir before it starts."""

    lease: str | None = None
    container_id: str | None = None
    argv: list[str] | None = None
    cmd: str | list[str] | None = None
    cwd: str | None = None
    env: dict[str, str] | None = None
    files: dict[str, str] | None = None
    forward_env: list[str] | None = None


class SessionCallRequest(msgspec.Struct, kw_only=True):
    """Body of /sessions/call: ``request`` is any JSON value, sent to the program as one line."""

    lease: str | None = None
    container_id: str | None = None
    request: msgspec.Raw = msgspec.Raw(b"")
    timeout_s: float | None = None
    timeout: float | None = None


_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {
    t: msgspec.json.Decoder(t)
    for t in (AcquireRequest, LeaseRequest, ExecuteRequest, SessionStartRequest, SessionCallRequest)
}
encoder = msgspec.json.Encoder()


def decode(body: bytes, kind: type[T]) -> T:
    """Decode a request body; an empty body is ``{}``. Raises ``BadRequest`` naming the field."""
    if not body.strip():
        body = b"{}"
    try:
        return _decoders[kind].decode(body)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        msg = str(exc)
        field = msg.rsplit("at `$.", 1)[1].rstrip("`") if "at `$." in msg else "body"
        raise BadRequest(field, f"{field}: {msg.split(' - at ', 1)[0]}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest("body", f"body: not valid JSON ({exc})") from None


def error_body(exc: BadRequest | Exception, field: str | None = None, session: str | None = None) -> bytes:
    """One line of JSON: ``error`` (our clients), ``detail`` (Matrix's client), ``field``,
    ``session`` (why a session call failed: none, died, timeout)."""
    message = " ".join(str(exc).split())
    body: dict[str, Any] = {"error": message, "detail": message}
    if field is not None:
        body["field"] = field
    if session is not None:
        body["session"] = session
    return encoder.encode(body)


def lease_of(req: LeaseRequest | ExecuteRequest | SessionStartRequest | SessionCallRequest) -> str:
    """The lease id, given as ``lease`` or Matrix's ``container_id``."""
    if req.lease and req.container_id and req.lease != req.container_id:
        raise BadRequest("lease", "lease: `lease` and `container_id` name different leases")
    lease = req.lease or req.container_id
    if not lease:
        raise BadRequest("lease", "lease: required (or `container_id`)")
    return lease


def positive(value: float | None, field: str, cap: float) -> float | None:
    if value is None:
        return None
    if not value > 0:
        raise BadRequest(field, f"{field}: must be > 0, got {value}")
    return min(value, cap)


def wait_of(req: AcquireRequest) -> float:
    """How long an /acquire may wait for a free sandbox (``wait_s``, or Matrix's ``timeout``)."""
    if req.wait_s is not None and req.wait_s < 0:
        raise BadRequest("wait_s", f"wait_s: must be >= 0, got {req.wait_s}")
    if req.timeout is not None and req.timeout < 0:
        raise BadRequest("timeout", f"timeout: must be >= 0, got {req.timeout}")
    wait = req.wait_s if req.wait_s is not None else req.timeout
    return min(wait or 0.0, MAX_WAIT_S)


def argv_of(req: ExecuteRequest | SessionStartRequest) -> list[str]:
    """The command: ``argv`` as given; ``cmd`` a string for ``/bin/sh -c`` or a list."""
    if req.argv is not None and req.cmd is not None:
        raise BadRequest("argv", "argv: give `argv` or `cmd`, not both")
    if req.argv is not None:
        if not req.argv or not req.argv[0]:
            raise BadRequest("argv", "argv: must be a non-empty list with a program first")
        return list(req.argv)
    if isinstance(req.cmd, str):
        if not req.cmd.strip():
            raise BadRequest("cmd", "cmd: empty command")
        return ["/bin/sh", "-c", req.cmd]
    if isinstance(req.cmd, list):
        if not req.cmd or not req.cmd[0]:
            raise BadRequest("cmd", "cmd: must be a non-empty list with a program first")
        return list(req.cmd)
    raise BadRequest("argv", "argv: required (or `cmd`)")


def check_execute(req: ExecuteRequest | SessionStartRequest) -> None:
    """Field checks that are not about types."""
    if req.forward_env:
        raise BadRequest("forward_env",
                         "forward_env: not supported (a sandbox gets none of the server's environment)")
    for key in req.env or {}:
        if not key or "=" in key or "\x00" in key:
            raise BadRequest("env", f"env: bad variable name {key!r}")
    if req.cwd is not None and ("\x00" in req.cwd or ".." in req.cwd.split("/")):
        raise BadRequest("cwd", f"cwd: {req.cwd!r} must stay inside the sandbox's paths without '..'")


def request_line(req: SessionCallRequest) -> bytes:
    """The call's ``request`` as one line for the program's stdin. JSON has no raw
    newline inside a string (it is escaped), so any newline is whitespace between tokens."""
    raw = bytes(req.request)
    if not raw:
        raise BadRequest("request", "request: required (any JSON value, sent to the session as one line)")
    return raw.replace(b"\n", b" ").replace(b"\r", b" ") + b"\n"
