"""``llm-register``: one model server announcing itself to the fleet.

Runs beside each replica (one registrar per replica, not per worker: a fleet of
hundreds of workers must not scrape every server). At start it checks the
server's ``/health`` and ``/v1/models``; then every ``interval_s`` it scrapes
the server's own ``/metrics`` and writes the replica's ``Registration`` (URL,
models, capacity hints, load) to the registry, which also renews its TTL. On
stop it deletes the entry; a registrar killed with ``kill -9`` leaves an entry
that lapses after ``ttl_s``.

Error handling: a server that does not answer at start within
``startup_timeout_s`` (or does not serve the model asked for) is a
``ConfigError``. Later, ``FAILS_BEFORE_WITHDRAW`` scrapes in a row that fail
withdraw the entry (no new traffic to a server that stopped answering) until
the server answers again. A registry write that fails is logged and tried
again at the next scrape (the entry lapses if the broker stays away).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from typing import Protocol

import aiohttp
import structlog

from matrix_p2p.aio import pause
from matrix_p2p.errors import BusError, ConfigError
from matrix_p2p.llm import wire
from matrix_p2p.llm.client import session_headers
from matrix_p2p.llm.config import LLMConfig
from matrix_p2p.llm.pool import normalise_url
from matrix_p2p.llm.registry import PrefixCounters, Registration, parse_load, parse_models

log = structlog.get_logger(__name__)

HEALTH_PATH = "/health"
FAILS_BEFORE_WITHDRAW = 3


class RegistryWriter(Protocol):
    async def put(self, reg: Registration) -> None: ...

    async def delete(self, url: str) -> None: ...


class Registrar:
    """Keeps one replica's registry entry up to date until ``stop``."""

    def __init__(self, url: str, writer: RegistryWriter, *, model: str | None = None,
                 interval_s: float = 1.0, ttl_s: float = 10.0,
                 max_num_seqs: int | None = None, startup_timeout_s: float = 60.0,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.url = normalise_url(url)
        self._writer = writer
        self._model = model
        self._interval_s = interval_s
        self._ttl_s = ttl_s
        self._max_num_seqs = max_num_seqs
        self._startup_timeout_s = startup_timeout_s
        self._wall = wall_clock
        self._name = f"{socket.gethostname()}-{os.getpid()}"
        self._prefix: PrefixCounters | None = None
        self.registered = False
        self.renewals = 0  # for tests and logs

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Check the server, then register and renew every ``interval_s`` until ``stop``;
        delete the entry on the way out (``ready`` is set after the first write)."""
        timeout = aiohttp.ClientTimeout(total=max(2.0, self._interval_s * 2))
        # vLLM's --api-key guards /v1/models: send OPENAI_API_KEY as the workers do
        headers = session_headers(LLMConfig())
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
            models, max_len = await self._check(session, stop)
            fails = 0
            try:
                while not stop.is_set():
                    text = await self._get(session, wire.METRICS_PATH)
                    if text is None:
                        fails += 1
                        if fails >= FAILS_BEFORE_WITHDRAW and self.registered:
                            log.warning("registrar.server_silent", url=self.url, fails=fails)
                            await self._withdraw()
                    else:
                        fails = 0
                        load, self._prefix = parse_load(text, self._prefix)
                        reg = Registration(url=self.url, models=models, max_model_len=max_len,
                                           max_num_seqs=self._max_num_seqs, load=load,
                                           updated_at=self._wall(), ttl_s=self._ttl_s,
                                           registrar=self._name)
                        await self._put(reg)
                        if ready is not None and self.registered:
                            ready.set()
                    await pause(self._interval_s, stop)
            finally:
                if self.registered:
                    await self._withdraw()

    async def _check(self, session: aiohttp.ClientSession,
                     stop: asyncio.Event) -> tuple[list[str], int | None]:
        """Wait for ``/health`` and read ``/v1/models``, within ``startup_timeout_s``."""
        deadline = time.monotonic() + self._startup_timeout_s
        why = "no answer"
        while True:
            health = await self._get(session, HEALTH_PATH)
            raw = await self._get(session, wire.MODELS_PATH) if health is not None else None
            if raw is not None:
                try:
                    models, max_len = parse_models(raw.encode())
                except ValueError as exc:
                    raise ConfigError(f"llm-register: {self.url}: {exc}") from None
                if not models:
                    raise ConfigError(f"llm-register: {self.url}: GET /v1/models: serves no models")
                if self._model is not None and self._model not in models:
                    raise ConfigError(f"llm-register: {self.url} serves {', '.join(models)}, "
                                      f"not --model {self._model}")
                # announce only the model asked for: a client asks by name
                return ([self._model] if self._model else models), max_len
            why = f"GET {HEALTH_PATH if health is None else wire.MODELS_PATH} failed"
            if time.monotonic() >= deadline or stop.is_set():
                raise ConfigError(f"llm-register: {self.url}: {why} within "
                                  f"{self._startup_timeout_s:g}s (is the model server up?)")
            await pause(1.0, stop)

    async def _get(self, session: aiohttp.ClientSession, path: str) -> str | None:
        try:
            async with session.get(self.url + path) as resp:
                if resp.status != 200:
                    return None
                return await resp.text()
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None

    async def _put(self, reg: Registration) -> None:
        try:
            await self._writer.put(reg)
        except BusError as exc:
            log.warning("registrar.put_failed", url=self.url, error=str(exc))
            return
        if not self.registered:
            log.info("registrar.registered", url=self.url, models=reg.models,
                     max_num_seqs=reg.max_num_seqs, max_model_len=reg.max_model_len)
        self.registered = True
        self.renewals += 1

    async def _withdraw(self) -> None:
        try:
            await self._writer.delete(self.url)
        except BusError as exc:
            log.warning("registrar.delete_failed", url=self.url, error=str(exc),
                        note=f"the entry lapses within {self._ttl_s:g}s")
            return
        self.registered = False
        log.info("registrar.withdrawn", url=self.url)
