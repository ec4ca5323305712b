"""The HTTP shell of the simulator: vLLM's OpenAI-compatible surface on aiohttp.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (both with
``stream``), ``GET /v1/models``, ``GET /health``, ``GET /metrics``, and the
simulator's own ``GET /sim/stats`` and ``POST /sim/faults``.

A request is parsed (``protocol``), given a fault (``faults``), its answer is
computed up front (``sampling`` + ``responder``), then a ``Sequence`` of the
sampled length goes through the batching ``engine``; the answer is sent when
the engine has generated it (or streamed as it goes).

Fault behaviour: ``fail_429`` / ``fail_503`` answer at once (429 with
``Retry-After: 1``); ``timeout`` hangs until the client disconnects, ``hang_s``
passes (then 504) or the server stops; ``drop`` aborts the TCP connection
after generation (non-stream) or after the first streamed chunk; ``garbage``
answers 200 with a body (or stream chunk) that is not JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

import msgspec
import structlog
from aiohttp import web

from matrix_p2p.errors import ConfigError
from matrix_p2p.httpserve import serve_app
from matrix_p2p.sim import metrics, protocol
from matrix_p2p.sim.answer import ContextTooLong, plan_answer
from matrix_p2p.sim.config import FAULT_FIELDS, SimConfig
from matrix_p2p.sim.engine import Engine, QueueFull, Sequence
from matrix_p2p.sim.faults import FAULT_KINDS, Fault, FaultDice
from matrix_p2p.sim.protocol import BadRequest, Kind, SimRequest

log = structlog.get_logger("matrix_p2p.sim")

_json = msgspec.json.Encoder()
_GARBAGE = b'{"id": "cmpl-garbage", "choices": [{"text": "unterminated'
_CLIENT_MAX_SIZE = 64 * 1024 * 1024


def _json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=_json.encode(body), status=status, headers=headers, content_type="application/json"
    )


def _error(
    status: int, message: str, kind: str, retry_after: float | None = None,
    param: str | None = None,
) -> web.Response:
    headers = {"Retry-After": str(int(retry_after))} if retry_after is not None else None
    return _json_response(protocol.error_body(message, kind, status, param), status, headers)


def _abort_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


class SimServer:
    """One simulated vLLM replica: an aiohttp site plus its engine loop task."""

    def __init__(self, config: SimConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config.validate()
        self.host = host
        self._requested_port = port
        self.port = 0
        self.engine = Engine(config)
        self._dice = FaultDice(config.seed)
        self._fault_counts: Counter[str] = Counter()
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._created = int(time.time())
        self._stopped = False

    @property
    def url(self) -> str:
        """Base URL as an OpenAI client expects it."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> SimServer:
        """Bind, start the engine and serve. Returns self."""
        app = web.Application(client_max_size=_CLIENT_MAX_SIZE)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/sim/stats", self._stats)
        app.router.add_post("/sim/faults", self._faults)
        runner, port = await serve_app(app, self.host, self._requested_port)
        self._runner = runner
        self.port = port
        self.engine.start()
        log.info(
            "sim.started",
            url=self.url,
            model=self.config.model,
            capacity_tokens_per_s=round(self.config.capacity_tokens_per_s()),
        )
        return self

    async def stop(self) -> None:
        """Stop serving: hung and in-flight requests end, the engine task ends,
        the site closes. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        await self.engine.stop()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- run-time control ----------------------------------------------------

    def set_faults(self, **fields: Any) -> SimConfig:
        """Change fault fields (see ``config.FAULT_FIELDS``) at run time."""
        self.config = self.config.with_faults(**fields)
        self.engine.set_config(self.config)
        return self.config

    def stats(self) -> dict[str, Any]:
        core = self.engine.core
        return {
            "model": self.config.model,
            "running": len(core.running),
            "waiting": len(core.waiting),
            "max_running_seen": core.max_running_seen,
            "completed": core.completed,
            "aborted": core.aborted,
            "rejected": core.rejected,
            "prompt_tokens": core.prompt_tokens_total,
            "generated_tokens": core.generation_tokens_total,
            "capacity_tokens_per_s": self.config.capacity_tokens_per_s(),
            "faults": {kind: self._fault_counts[kind] for kind in FAULT_KINDS},
            "fault_settings": {f: getattr(self.config, f) for f in sorted(FAULT_FIELDS)},
        }

    # -- handlers ------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _models(self, request: web.Request) -> web.Response:
        body = protocol.models_body(self.config.model, self._created, self.config.max_model_len)
        return _json_response(body)

    async def _metrics(self, request: web.Request) -> web.Response:
        text = metrics.render(self.engine.core, self.config.model, self.config.kv_cache_tokens)
        return web.Response(
            text=text,
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Prometheus-Version": "0.0.4"},
        )

    async def _stats(self, request: web.Request) -> web.Response:
        return _json_response(self.stats())

    async def _faults(self, request: web.Request) -> web.Response:
        try:
            fields = msgspec.json.decode(await request.read())
            if not isinstance(fields, dict):
                raise ConfigError("sim faults: body must be a JSON object")
            self.set_faults(**fields)
        except (msgspec.DecodeError, ConfigError) as exc:
            return _error(400, str(exc), "BadRequestError")
        return _json_response(self.stats()["fault_settings"])

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "chat")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "completion")

    async def _complete(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        config = self.config
        try:
            req = protocol.parse_request(await request.read(), kind, config.model)
        except BadRequest as exc:
            return _error(400, str(exc), "BadRequestError")
        # validated before any fault, as vLLM validates before scheduling
        try:
            answer = plan_answer(config, req)
        except ContextTooLong as exc:
            return _error(400, str(exc), "BadRequestError", param=exc.param)
        fault: Fault = self._dice.roll(config)
        if fault != "none":
            self._fault_counts[fault] += 1
        if fault == "fail_429":
            return _error(429, "simulated overload", "RateLimitError", retry_after=1)
        if fault == "fail_503":
            return _error(503, "simulated unavailable", "ServiceUnavailableError")
        if fault == "timeout":
            return await self._hang(request, config.hang_s)

        seq = Sequence(
            answer.prompt_tokens, answer.completion_tokens, answer.finish_reason, stream=req.stream
        )
        try:
            self.engine.submit(seq)
        except QueueFull as exc:
            return _error(429, str(exc), "RateLimitError", retry_after=1)
        try:
            if req.stream:
                return await self._stream(request, req, seq, answer.text, fault, answer.tool_calls)
            while seq.active:
                await seq.changed.wait()
                seq.changed.clear()
            if seq.state != "finished":
                return _error(503, "simulator stopping", "ServiceUnavailableError")
            if fault == "drop":
                _abort_connection(request)
                return web.Response(status=500)  # never reaches the client
            if fault == "garbage":
                return web.Response(body=_GARBAGE, content_type="application/json")
            use = protocol.usage(answer.prompt_tokens, answer.completion_tokens)
            body = protocol.completion_body(
                req, protocol.new_id(kind), answer.text, answer.finish_reason, use, answer.tool_calls
            )
            return _json_response(body)
        finally:
            self.engine.abort(seq)  # no-op once finished; frees the slot if the client left

    async def _stream(
        self,
        request: web.Request,
        req: SimRequest,
        seq: Sequence,
        text: str,
        fault: Fault,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        rid, created = protocol.new_id(req.kind), int(time.time())
        pieces = protocol.split_tokens(text)

        async def send(obj: Any) -> None:
            await resp.write(b"data: " + _json.encode(obj) + b"\n\n")

        try:
            if req.kind == "chat":
                await send(protocol.chunk_body(req, rid, created, role=True))
            sent = 0
            while seq.active:
                await seq.changed.wait()
                seq.changed.clear()
                # A finished answer may have a few more words than tokens (the
                # answer line is never cut): flush them all at the end.
                upto = len(pieces) if seq.state == "finished" else min(seq.generated, len(pieces))
                if upto > sent:
                    if fault == "garbage":
                        await resp.write(b"data: " + _GARBAGE + b"\n\n")
                    else:
                        delta = "".join(pieces[sent:upto])
                        await send(protocol.chunk_body(req, rid, created, text=delta))
                    sent = upto
                    if fault == "drop":
                        _abort_connection(request)
                        return resp
            if seq.state != "finished":
                return resp  # stopping: the stream ends without [DONE]
            if tool_calls and fault != "garbage":
                await send(protocol.chunk_body(req, rid, created, tool_calls=tool_calls))
            await send(protocol.chunk_body(req, rid, created, finish_reason=seq.finish_reason))
            if req.include_usage:
                use = protocol.usage(seq.prompt_tokens, seq.target_tokens)
                await send(protocol.usage_chunk(req, rid, created, use))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the client went away; the caller's finally aborts the sequence
        return resp

    async def _hang(self, request: web.Request, hang_s: float) -> web.StreamResponse:
        """A request that never answers: ends on client disconnect (handler
        cancelled), on server stop (connection aborted) or after ``hang_s`` (504)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(hang_s):
                await self._stopping.wait()
        if self._stopping.is_set():
            _abort_connection(request)
        return _error(504, "simulated timeout", "TimeoutError")


async def start_sim(config: SimConfig, host: str = "127.0.0.1", port: int = 0) -> SimServer:
    """Start one replica on ``host:port`` (0 = a free port) and return it."""
    return await SimServer(config, host, port).start()


async def start_fleet(
    config: SimConfig, replicas: int, host: str = "127.0.0.1", base_port: int = 0
) -> list[SimServer]:
    """Start ``replicas`` replicas on ports ``base_port + i`` (free ports if 0);
    replica ``i`` uses seed ``config.seed + i``. On failure, stops those started."""
    servers: list[SimServer] = []
    try:
        for i in range(replicas):
            replica = msgspec.structs.replace(config, seed=config.seed + i)
            port = base_port + i if base_port else 0
            servers.append(await start_sim(replica, host, port))
    except BaseException:
        for srv in servers:
            await srv.stop()
        raise
    return servers


async def serve_forever(
    config: SimConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    replicas: int = 1,
    stop: asyncio.Event | None = None,
) -> None:
    """Run a fleet until ``stop`` is set (or this coroutine is cancelled),
    printing one line per replica, then stop every replica cleanly.

    Error handling: a bad config raises ``ConfigError`` and a port in use
    raises ``OSError`` before anything serves (replicas already started are
    stopped). Nothing is retried; every replica is stopped on the way out.
    """
    if stop is None:
        stop = asyncio.Event()
    servers = await start_fleet(config, replicas, host, port)
    try:
        for srv in servers:
            print(
                f"sim-llm replica {srv.url} model={srv.config.model} "
                f"capacity={srv.config.capacity_tokens_per_s():.0f} tokens/s "
                f"max_num_seqs={srv.config.max_num_seqs}",
                flush=True,
            )
        await stop.wait()
    finally:
        for srv in servers:
            await srv.stop()
