"""Client of one sandbox server: the only module that speaks HTTP to it.

Habits shared with the LLM client: one aiohttp session, jittered backoff,
``Retry-After`` honoured on 503, a circuit breaker that stops hammering a
dead server, and aiohttp errors translated into our typed errors.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp
import msgspec
import structlog

from matrix_p2p.backoff import Backoff
from matrix_p2p.llm.breaker import CircuitBreaker
from matrix_p2p.llm.wire import parse_retry_after
from matrix_p2p.sandbox.errors import SESSION_ERRORS, LeaseGone, SandboxError, SandboxUnavailable
from matrix_p2p.sandbox.runner import ExecResult

log = structlog.get_logger(__name__)

_MARGIN_S = 30.0  # HTTP timeout on top of the server-side wait (execution or long poll)


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    """A held sandbox: ``id`` (also Matrix's ``container_id``), the server's
    ``endpoint`` URL, and ``expires_at`` as a Unix time unless renewed."""

    id: str
    endpoint: str
    expires_at: float
    ttl_s: float = 0.0
    kind: str = "sandbox"


class Execution(ExecResult, kw_only=True):
    """An execution's result as the server sent it; ``output`` is stdout then stderr."""

    output: str = ""


class SessionReply(msgspec.Struct, kw_only=True):
    """A session call's answer: ``reply`` is the JSON value the program wrote. ``restarted``:
    the session had died (``lost`` says why) and was started again for this call, so the
    program's in-memory state from before is gone. ``generation`` counts the processes the
    lease's session has had; ``elapsed_s`` is the call's time in the server."""

    reply: Any = None
    restarted: bool = False
    lost: str | None = None
    generation: int = 0
    elapsed_s: float = 0.0


class SessionStarted(msgspec.Struct, kw_only=True):
    """``started`` False: that very program was already the lease's live session (kept)."""

    started: bool
    generation: int = 0


class _LeaseBody(msgspec.Struct):
    lease: str
    expires_at: float
    ttl_s: float = 0.0


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """What a server's ``GET /healthz`` said. ``error`` (naming the URL) is None when it
    answered; ``braked``: its pool stopped handing out sandboxes for a while."""

    url: str
    error: str | None = None
    free: int | None = None
    braked: bool = False


class _HealthBody(msgspec.Struct):
    ok: bool = False
    free: int | None = None
    braked: bool = False


_lease_decoder = msgspec.json.Decoder(_LeaseBody)
_health_decoder = msgspec.json.Decoder(_HealthBody)
_exec_decoder = msgspec.json.Decoder(Execution)
_reply_decoder = msgspec.json.Decoder(SessionReply)
_started_decoder = msgspec.json.Decoder(SessionStarted)
_encoder = msgspec.json.Encoder()


def _doc(body: bytes) -> dict[str, Any]:
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _message(body: bytes, status: int) -> str:
    error = _doc(body).get("error")
    if error:
        return str(error)
    return f"HTTP {status}: {body[:200].decode(errors='replace')}"


class SandboxClient:
    """``acquire`` / ``execute`` / ``renew`` / ``release`` / ``status`` against one server.

    Use as ``async with SandboxClient(url) as client``.

    Error handling: ``acquire`` retries while the pool is exhausted (503:
    after ``Retry-After``, counted from when the request was sent, since the
    server already long-polled for part of it), on connection errors (with
    backoff) and while the breaker is open (until it admits a probe), all
    up to ``acquire_timeout_s``; then ``SandboxUnavailable``. The other
    calls are not retried (an execution is not idempotent): an unreachable
    server or open breaker raises ``SandboxUnavailable``, a 404
    ``LeaseGone`` (restart the trajectory on a fresh lease), a session that
    could not answer (409) ``NoSession``, ``SessionDied`` or ``SessionTimeout``
    (see ``errors.SessionError``), other errors ``SandboxError`` with the
    server's one-line message.
    """

    def __init__(
        self,
        url: str,
        *,
        acquire_timeout_s: float = 300.0,
        long_poll_s: float = 10.0,
        request_timeout_s: float = 30.0,
        backoff: Backoff | None = None,
        breaker_failures: int = 3,
        breaker_cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.url = url.rstrip("/")
        self.acquire_timeout_s = acquire_timeout_s
        self.long_poll_s = long_poll_s
        self.request_timeout_s = request_timeout_s
        self.backoff = backoff or Backoff(0.2, 5.0, rng)
        self.breaker = CircuitBreaker(breaker_failures, breaker_cooldown_s)
        self.clock = clock
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SandboxClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"Content-Type": "application/json"})

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- the verbs ----------------------------------------------------------------
    async def acquire(self, task_id: str = "", *, ttl_s: float | None = None,
                      timeout_s: float | None = None) -> Lease:
        """A sandbox for ``task_id``, waiting up to ``timeout_s`` (default ``acquire_timeout_s``)."""
        deadline = self.clock() + (self.acquire_timeout_s if timeout_s is None else timeout_s)
        attempt = 0
        last: SandboxUnavailable
        while True:
            sent = self.clock()
            wait = max(0.0, min(self.long_poll_s, deadline - sent - 0.5))
            body: dict[str, Any] = {"task_id": task_id, "wait_s": wait}
            if ttl_s is not None:
                body["ttl_s"] = ttl_s
            try:
                http_timeout = wait + self.request_timeout_s
                status, headers, data = await self._call("POST", "/acquire", body, http_timeout)
            except SandboxUnavailable as exc:
                last = exc
                delay = exc.retry_after_s if exc.retry_after_s is not None else self.backoff.delay(attempt)
            else:
                if status == 200:
                    return self._lease(data)
                if status != 503:
                    raise self._error(status, data)
                last = SandboxUnavailable(_message(data, status), 503)
                hinted = parse_retry_after(headers.get("Retry-After"), time.time())
                delay = max(0.0, hinted - (self.clock() - sent)) if hinted is not None \
                    else self.backoff.delay(attempt)
            attempt += 1
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise SandboxUnavailable(f"no sandbox before the deadline: {last}", last.status)
            # A hint past the deadline still gets one last try at the deadline:
            # a braked pool can come back early.
            await self._sleep(min(delay, remaining))

    async def execute(
        self,
        lease: Lease | str,
        argv: Sequence[str] | None = None,
        *,
        cmd: str | None = None,
        stdin: str | None = None,
        timeout_s: float | None = None,
        files: Mapping[str, str] | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Execution:
        """Run ``argv`` (or ``cmd`` through ``/bin/sh -c``) in the lease's sandbox,
        after writing ``files`` (relative path -> text) into its work dir."""
        body: dict[str, Any] = {"lease": _id(lease)}
        for key, value in (("argv", list(argv) if argv is not None else None), ("cmd", cmd),
                           ("stdin", stdin), ("timeout_s", timeout_s), ("cwd", cwd),
                           ("files", dict(files) if files else None), ("env", dict(env) if env else None)):
            if value is not None:
                body[key] = value
        http_timeout = (timeout_s or 600.0) + _MARGIN_S
        status, _, data = await self._call("POST", "/execute", body, http_timeout)
        if status != 200:
            raise self._error(status, data)
        return _exec_decoder.decode(data)

    async def start_session(
        self,
        lease: Lease | str,
        argv: Sequence[str] | None = None,
        *,
        cmd: str | None = None,
        files: Mapping[str, str] | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> SessionStarted:
        """Start ``argv`` (or ``cmd``) as the lease's session, after writing ``files``; a
        session already running the same program, env and cwd is kept; another is replaced."""
        body: dict[str, Any] = {"lease": _id(lease)}
        for key, value in (("argv", list(argv) if argv is not None else None), ("cmd", cmd),
                           ("cwd", cwd), ("files", dict(files) if files else None),
                           ("env", dict(env) if env else None)):
            if value is not None:
                body[key] = value
        status, _, data = await self._call("POST", "/sessions/start", body, self.request_timeout_s)
        if status != 200:
            raise self._error(status, data)
        return _started_decoder.decode(data)

    async def call(self, lease: Lease | str, request: Any, *, timeout_s: float | None = None) -> SessionReply:
        """Send ``request`` (any JSON value) to the lease's session; its one-line JSON reply back.
        Not retried: ``SessionDied`` / ``SessionTimeout`` mean it may or may not have acted."""
        body: dict[str, Any] = {"lease": _id(lease), "request": request}
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        http_timeout = (timeout_s or 600.0) + _MARGIN_S
        status, _, data = await self._call("POST", "/sessions/call", body, http_timeout)
        if status != 200:
            raise self._error(status, data)
        return _reply_decoder.decode(data)

    async def stop_session(self, lease: Lease | str) -> bool:
        """Kill the lease's session; False when it had none."""
        status, _, data = await self._call("POST", "/sessions/stop", {"lease": _id(lease)},
                                           self.request_timeout_s)
        if status != 200:
            raise self._error(status, data)
        return bool(_doc(data).get("stopped"))

    async def renew(self, lease: Lease | str, ttl_s: float | None = None) -> Lease:
        body: dict[str, Any] = {"lease": _id(lease)}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        status, _, data = await self._call("POST", "/renew", body, self.request_timeout_s)
        if status != 200:
            raise self._error(status, data)
        return self._lease(data)

    async def release(self, lease: Lease | str) -> bool:
        """Give the sandbox back. False when the server no longer knew the lease (nothing to do)."""
        status, _, data = await self._call("POST", "/release", {"lease": _id(lease)}, self.request_timeout_s)
        if status == 404:
            return False
        if status != 200:
            raise self._error(status, data)
        return True

    async def status(self) -> dict[str, Any]:
        status, _, data = await self._call("GET", "/status", None, self.request_timeout_s)
        if status != 200:
            raise self._error(status, data)
        doc: dict[str, Any] = msgspec.json.decode(data)
        return doc

    async def health(self) -> Health:
        """``GET /healthz`` within ``request_timeout_s``. Never raises for a server that is
        down or is not a sandbox server: that is ``Health.error``."""
        try:
            status, _, data = await self._call("GET", "/healthz", None, self.request_timeout_s)
        except SandboxUnavailable as exc:
            return Health(url=self.url, error=str(exc))
        if status not in (200, 503):  # 503: braked, still a sandbox server
            return Health(url=self.url, error=f"sandbox server {self.url}: GET /healthz: "
                                              f"{' '.join(_message(data, status).split())}")
        try:
            body = _health_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return Health(url=self.url, error=f"sandbox server {self.url}: GET /healthz: {exc}")
        return Health(url=self.url, free=body.free, braked=body.braked)

    # -- plumbing -------------------------------------------------------------------
    def _lease(self, data: bytes) -> Lease:
        body = _lease_decoder.decode(data)
        return Lease(id=body.lease, endpoint=self.url, expires_at=body.expires_at, ttl_s=body.ttl_s)

    def _error(self, status: int, data: bytes) -> SandboxError:
        msg = _message(data, status)
        if status == 404:
            return LeaseGone(msg, 404)
        if status == 503:
            return SandboxUnavailable(msg, 503)
        if status == 409:
            kind = SESSION_ERRORS.get(str(_doc(data).get("session")))
            if kind is not None:
                return kind(msg)
        return SandboxError(msg, status)

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None, timeout_s: float
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One HTTP exchange. Connection errors, timeouts and 5xx (not 503) count against the breaker."""
        if self._session is None:
            raise SandboxError("SandboxClient is not started (use `async with`)")
        now = self.clock()
        if not self.breaker.can_admit(now):
            wait = max(0.0, self.breaker.reopen_at() - now)
            raise SandboxUnavailable(f"sandbox server {self.url} is down (circuit open)", None, wait)
        self.breaker.on_admit(now)
        data = _encoder.encode(body) if body is not None else None
        try:
            async with self._session.request(method, self.url + path, data=data,
                                             timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                payload = await resp.read()
                status, headers = resp.status, resp.headers
        except asyncio.CancelledError:
            self.breaker.on_abandoned(self.clock())
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if self.breaker.on_failure(self.clock()) == "ejected":
                log.warning("sandbox.server_down", url=self.url, error=str(exc) or type(exc).__name__)
            raise SandboxUnavailable(f"sandbox server {self.url} unreachable: "
                                     f"{str(exc) or type(exc).__name__}") from None
        if status >= 500 and status != 503:
            self.breaker.on_failure(self.clock())
        elif self.breaker.on_answered(self.clock()) == "recovered":
            log.info("sandbox.server_back", url=self.url)
        return status, headers, payload


def _id(lease: Lease | str) -> str:
    return lease if isinstance(lease, str) else lease.id


async def probe_health(urls: Sequence[str], *, timeout_s: float = 5.0) -> list[Health]:
    """``health()`` of every server at once (each within ``timeout_s``), in the order
    given: ``run`` and ``worker`` ask before they start (``resources/preflight.py``)."""

    async def one(url: str) -> Health:
        async with SandboxClient(url, request_timeout_s=timeout_s) as client:
            return await client.health()

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one(u)) for u in dict.fromkeys(u.rstrip("/") for u in urls)]
    return [t.result() for t in tasks]
