"""The sandbox service's HTTP surface (aiohttp): parse, call the service, map the outcome to a status.

Routes: ``POST /acquire /execute /renew /release /release_all``, ``POST
/sessions/start /sessions/call /sessions/stop``, ``GET /status /healthz
/metrics``. 400 = a bad field (one-line JSON naming it), 404 = unknown
lease, 409 = the lease's session could not answer (``session``: none, died,
timeout), 503 + Retry-After = no sandbox to hand out.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

import matrix_p2p.sandbox.metrics as metrics
import matrix_p2p.sandbox.protocol as protocol
import matrix_p2p.sandbox.workdir as workdir
from matrix_p2p.httpserve import serve_app
from matrix_p2p.sandbox.errors import BadRequest, SandboxUnavailable, SessionError, UnknownLease
from matrix_p2p.sandbox.pool import Lease
from matrix_p2p.sandbox.runner import ExecSpec
from matrix_p2p.sandbox.service import SandboxConfig, SandboxService
from matrix_p2p.sandbox.sessions import SessionSpec

log = structlog.get_logger(__name__)

_CLIENT_MAX_SIZE = 32 << 20  # request bodies carry files (16 MiB at most, see workdir)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=protocol.encoder.encode(body), status=status, headers=headers,
                        content_type="application/json")


def _error(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


@web.middleware
async def _map_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Our errors become statuses here, once, instead of in every handler."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return _error(400, protocol.error_body(exc, exc.field))
    except UnknownLease as exc:
        return _error(404, protocol.error_body(exc, "lease"))
    except SessionError as exc:
        return _error(409, protocol.error_body(exc, session=exc.kind))
    except SandboxUnavailable as exc:
        retry = max(1, math.ceil(exc.retry_after_s or 1.0))  # Retry-After is whole seconds
        return _error(503, protocol.error_body(exc), {"Retry-After": str(retry)})


class SandboxServer:
    """A ``SandboxService`` behind HTTP on ``host:port`` (0 = a free port).

    Start in-process with ``async with SandboxServer(cfg, port=0) as srv:``
    (``srv.url`` is then set) or ``await start_sandbox_server(cfg)``.
    """

    def __init__(self, config: SandboxConfig, host: str = "127.0.0.1", port: int = 0,
                 *, service: SandboxService | None = None) -> None:
        self.service = service or SandboxService(config)
        self.host = host
        self._requested_port = port
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._registry = metrics.registry_for(self.service)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> SandboxServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> SandboxServer:
        await self.service.start()
        try:
            app = web.Application(client_max_size=_CLIENT_MAX_SIZE, middlewares=[_map_errors])
            app.router.add_post("/acquire", self._acquire)
            app.router.add_post("/execute", self._execute)
            app.router.add_post("/renew", self._renew)
            app.router.add_post("/release", self._release)
            app.router.add_post("/release_all", self._release_all)
            app.router.add_post("/sessions/start", self._session_start)
            app.router.add_post("/sessions/call", self._session_call)
            app.router.add_post("/sessions/stop", self._session_stop)
            app.router.add_get("/status", self._status)
            app.router.add_get("/healthz", self._healthz)
            app.router.add_get("/metrics", self._metrics)
            runner, port = await serve_app(app, self.host, self._requested_port)
        except BaseException:
            await self.service.stop()
            raise
        self._runner = runner
        self.port = port
        log.info("sandbox.serving", url=self.url)
        return self

    async def stop(self) -> None:
        """Stop serving, then stop the service (kills executions, deletes directories). Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await self.service.stop()

    # -- handlers ---------------------------------------------------------------
    def _lease_body(self, lease: Lease) -> dict[str, Any]:
        return {"lease": lease.id, "container_id": lease.id, "expires_at": self.service.wall_expiry(lease),
                "ttl_s": lease.ttl_s, "task_id": lease.task_id, "endpoint": self.url}

    async def _acquire(self, request: web.Request) -> web.Response:
        req = protocol.decode(await request.read(), protocol.AcquireRequest)
        ttl = protocol.positive(req.ttl_s, "ttl_s", self.service.config.max_ttl_s)
        lease = await self.service.acquire(req.task_id, ttl, protocol.wait_of(req))
        return _json(self._lease_body(lease))

    async def _execute(self, request: web.Request) -> web.Response:
        req = protocol.decode(await request.read(), protocol.ExecuteRequest)
        lease_id = protocol.lease_of(req)
        argv = protocol.argv_of(req)
        protocol.check_execute(req)
        timeout = self._timeout(req.timeout_s, req.timeout)
        files = workdir.check_files(req.files) if req.files else None
        spec = ExecSpec(argv=argv, timeout_s=timeout, stdin=(req.stdin or "").encode(),
                        cwd=req.cwd, env=req.env)
        result = await self.service.execute(lease_id, spec, files)
        body = {
            "returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr,
            "timed_out": result.timed_out, "elapsed_s": result.elapsed_s,
            "stdout_truncated": result.stdout_truncated, "stderr_truncated": result.stderr_truncated,
            "output": result.stdout + result.stderr,  # Matrix's field: both streams together
            "lease": lease_id, "container_id": lease_id,
        }
        return _json(body)

    def _timeout(self, timeout_s: float | None, timeout: float | None) -> float:
        cfg = self.service.config
        return (protocol.positive(timeout_s, "timeout_s", cfg.max_timeout_s)
                or protocol.positive(timeout, "timeout", cfg.max_timeout_s)
                or cfg.default_timeout_s)

    async def _session_start(self, request: web.Request) -> web.Response:
        req = protocol.decode(await request.read(), protocol.SessionStartRequest)
        lease_id = protocol.lease_of(req)
        argv = protocol.argv_of(req)
        protocol.check_execute(req)
        files = workdir.check_files(req.files) if req.files else None
        spec = SessionSpec.of(argv, req.env, req.cwd)
        started, generation = await self.service.start_session(lease_id, spec, files)
        return _json({"lease": lease_id, "container_id": lease_id, "started": started,
                      "generation": generation})

    async def _session_call(self, request: web.Request) -> web.Response:
        req = protocol.decode(await request.read(), protocol.SessionCallRequest)
        lease_id = protocol.lease_of(req)
        line = protocol.request_line(req)
        answer = await self.service.call_session(lease_id, line, self._timeout(req.timeout_s, req.timeout))
        return _json({"reply": answer.reply, "restarted": answer.restarted is not None,
                      "lost": answer.restarted, "generation": answer.generation,
                      "elapsed_s": answer.elapsed_s, "lease": lease_id})

    async def _session_stop(self, request: web.Request) -> web.Response:
        req = protocol.decode(await request.read(), protocol.LeaseRequest)
        lease_id = protocol.lease_of(req)
        return _json({"lease": lease_id, "stopped": self.service.stop_session(lease_id)})

    async def _renew(self, request: web.Request) -> web.Response:
        req = protocol.decode(await request.read(), protocol.LeaseRequest)
        ttl = protocol.positive(req.ttl_s, "ttl_s", self.service.config.max_ttl_s)
        return _json(self._lease_body(self.service.renew(protocol.lease_of(req), ttl)))

    async def _release(self, request: web.Request) -> web.Response:
        req = protocol.decode(await request.read(), protocol.LeaseRequest)
        lease = self.service.release(protocol.lease_of(req))
        return _json({"status": "released", "lease": lease.id, "container_id": lease.id})

    async def _release_all(self, request: web.Request) -> web.Response:
        leases = self.service.release_all()
        ids = [ls.id for ls in leases]
        return _json({"status": "released", "released": ids, "container_ids": ids})

    async def _status(self, request: web.Request) -> web.Response:
        return _json(self.service.status())

    async def _healthz(self, request: web.Request) -> web.Response:
        st = self.service.status()
        ok = not st["braked"]
        return _json({"ok": ok, "free": st["free"], "braked": st["braked"]}, 200 if ok else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = metrics.render(self._registry)  # cheap: a handful of counters read on the loop
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


async def start_sandbox_server(
    config: SandboxConfig, host: str = "127.0.0.1", port: int = 0
) -> SandboxServer:
    """Start a service and its HTTP surface; ``await srv.stop()`` when done."""
    return await SandboxServer(config, host, port).start()


async def serve(config: SandboxConfig, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set, printing one line with the URL.

    Error handling: a start-up problem (no namespaces, port in use, bad
    config) raises before anything serves; on the way out every execution
    is killed and every work directory deleted.
    """
    async with SandboxServer(config, host, port) as srv:
        print(f"sandbox-server {srv.url} pool={config.pool_size} isolation={config.isolation}", flush=True)
        await stop.wait()
