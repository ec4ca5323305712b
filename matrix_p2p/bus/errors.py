"""The one translation of nats errors into ours.

Every nats call in the bus runs inside ``with translate("what, where"):``; what
it raises becomes a ``BusError`` (or a subclass) with a one-line message that
starts with that ``what``. The message builders below are shared with
``memory.MemoryBus``, so both buses word the same failure the same way.

Signals are ``BusError`` subclasses a caller may catch to carry on:
``NotFound`` (a delete, read or lookup found nothing), ``AlreadyExists`` (a
stream or bucket or key is there already), ``TimedOut`` (a fetch with nothing
to fetch). Left uncaught they are ordinary one-line ``BusError``\\ s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Literal, TypeVar

import nats.errors
import nats.js.errors
import structlog

from matrix_p2p.backoff import Retrying
from matrix_p2p.bus.types import PayloadTooLargeError
from matrix_p2p.errors import BusError

log = structlog.get_logger(__name__)

SETUP_RETRY_S = 30.0  # how long set-up calls wait for JetStream to become ready
_T = TypeVar("_T")
AUTH_HINT = "authorization refused (check user/password, token, NKey or creds)"
_ALREADY = ("already in use", "already exists", "wrong last sequence")
_STREAM_NAME_IN_USE = 10058  # JetStream err_code: a stream with this name exists


class NotFound(BusError):
    """The stream, consumer, message, bucket or key is not there."""


class AlreadyExists(BusError):
    """The stream, bucket or key is there already."""


class TimedOut(BusError):
    """The broker did not answer in time."""


# ------------------------------------------------------------------ messages
def failed(what: str, why: str) -> BusError:
    return BusError(f"{what} failed: {why}")


def refused(what: str, why: str) -> BusError:
    return BusError(f"{what} refused: {why}")


def timed_out(what: str) -> TimedOut:
    return TimedOut(f"{what} timed out")


def not_found(what: str, detail: str | None = None) -> NotFound:
    return NotFound(f"{what} failed: not found" + (f" ({detail})" if detail else ""))


def already_exists(what: str, detail: str | None = None) -> AlreadyExists:
    return AlreadyExists(f"{what} failed: already exists" + (f" ({detail})" if detail else ""))


def closed(what: str) -> BusError:
    return failed(what, "NATS connection closed")


def already_acked(what: str) -> BusError:
    return failed(what, "message already acknowledged")


def no_stream(what: str) -> BusError:
    return failed(what, "no stream accepts this subject")


def too_large(what: str, size: int | None, limit: int | None) -> PayloadTooLargeError:
    if size is None or limit is None:
        return PayloadTooLargeError(f"{what} refused: the message exceeds the broker's max_payload")
    return PayloadTooLargeError(
        f"{what} refused: {size} bytes exceed the broker's max_payload of {limit} bytes")


def reason(exc: BaseException) -> str:
    """Why, in a few words, for a nats error (connect messages and logs)."""
    text = str(exc) or type(exc).__name__
    low = text.lower()
    if ("authorization" in low or "authentication" in low
            or isinstance(exc, nats.errors.AuthorizationError)):
        return AUTH_HINT
    return text


# -------------------------------------------------------------- translation
def to_bus_error(exc: BaseException, what: str, size: int | None = None,
                 limit: int | None = None) -> BusError | None:
    """Our error for ``exc`` raised while doing ``what``; None for anything that
    is not a broker error (a bug: let it propagate as it is)."""
    if isinstance(exc, BusError):
        return exc
    if isinstance(exc, nats.js.errors.APIError):
        return _api_error(exc, what)
    if isinstance(exc, TimeoutError):  # nats' TimeoutError too; before OSError, its base
        return timed_out(what)
    if isinstance(exc, nats.errors.MaxPayloadError):
        return too_large(what, size, limit)
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        return no_stream(what)
    if isinstance(exc, nats.errors.NoRespondersError):
        return failed(what, "JetStream is not available (no responders)")
    if isinstance(exc, nats.errors.ConnectionClosedError):
        return closed(what)
    if isinstance(exc, nats.errors.ConnectionDrainingError):
        return failed(what, "NATS connection is draining")
    if isinstance(exc, nats.errors.MsgAlreadyAckdError):
        return already_acked(what)
    if isinstance(exc, nats.errors.NotJSMessageError):
        return failed(what, "not a JetStream message")
    if isinstance(exc, nats.errors.Error | OSError):
        return failed(what, reason(exc))
    return None


def _api_error(exc: nats.js.errors.APIError, what: str) -> BusError:
    # read with getattr: some subclasses (KeyNotFoundError, KeyDeletedError) skip
    # APIError.__init__ and have no code or description at all
    code = getattr(exc, "code", None)
    description: str | None = getattr(exc, "description", None)
    desc = description or (f"code {code}" if code is not None else "no reason given")
    # "sequence 3 not found" comes as a 400 (deleting a deleted message)
    if isinstance(exc, nats.js.errors.NotFoundError) or code == 404 or desc.endswith("not found"):
        return not_found(what, description)
    if (isinstance(exc, nats.js.errors.KeyWrongLastSequenceError)
            or getattr(exc, "err_code", None) == _STREAM_NAME_IN_USE
            or any(s in desc.lower() for s in _ALREADY)):
        return already_exists(what, description)
    if isinstance(exc, nats.js.errors.ServiceUnavailableError) or code == 503:
        return failed(what, "JetStream is not available (503)")
    if isinstance(exc, nats.js.errors.ServerError) or (code or 0) >= 500:
        return failed(what, desc)  # the server's own trouble, not a verdict on the request
    return refused(what, desc)


class translate:
    """Turn broker errors raised in the block into ``BusError``\\ s about ``what``.

    A class rather than ``@contextmanager``: it wraps every ack and publish on
    the hot path, where a generator per call costs more than the ack's own code.
    ``size``/``limit`` go into a too-large message (publish).
    """

    __slots__ = ("limit", "size", "what")

    def __init__(self, what: str, *, size: int | None = None, limit: int | None = None) -> None:
        self.what = what
        self.size = size
        self.limit = limit

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        if exc is None or isinstance(exc, BusError):
            return False
        err = to_bus_error(exc, self.what, self.size, self.limit)
        if err is None:
            return False
        # from None: one line for users; the nats error stays in __context__ (connect reads it)
        raise err from None


# ---------------------------------------------------------------- set-up calls
_NOT_READY = (TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError)


async def when_ready(
    what: str, op: Callable[[], Awaitable[_T]], *,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> _T:
    """Run a JetStream set-up call, retrying while JetStream is not ready (a
    cluster electing its meta leader, a broker restarting).

    Error handling: not-ready errors are retried with jittered backoff (0.2 s
    up to 3 s) for ``SETUP_RETRY_S``, each retry logged; then the last error
    propagates (raw: run this inside ``translate``). Other errors propagate at once.
    """
    now = clock or asyncio.get_running_loop().time
    deadline = now() + SETUP_RETRY_S
    backoff = Retrying(0.2, 3.0)
    while True:
        try:
            return await op()
        except _NOT_READY as exc:
            delay = backoff.next()
            if now() + delay > deadline:
                raise
            log.warning("bus.jetstream_not_ready", what=what, error=reason(exc), retry_in_s=delay)
            await sleep(delay)
