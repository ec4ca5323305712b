"""A workflow's LLM resources as live clients: one ``LLMClient`` per resource, shared by roles,
and the fleet-wide endpoint state those clients share with every other worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec

from matrix_p2p.agent import ChatClient
from matrix_p2p.bus import Bus
from matrix_p2p.envelope import Usage
from matrix_p2p.errors import ConfigError
from matrix_p2p.llm import FleetState, LLMClient, LLMConfig
from matrix_p2p.llm.cache import CacheStats, ResponseCache
from matrix_p2p.llm.config import DEFAULT_KEY_ENV
from matrix_p2p.llm.outcomes import AttemptRecorder
from matrix_p2p.llm.registry import ReplicaSource, serving
from matrix_p2p.runtime.topology import Names
from matrix_p2p.workflow.spec import LLMResource, WorkflowSpec


class LLMSet:
    """The clients of one process, and which role uses which."""

    def __init__(self, clients: dict[str, LLMClient], by_role: dict[str, ChatClient | None]) -> None:
        self.clients = clients
        self.by_role = by_role

    def cache_stats(self) -> CacheStats | None:
        """The response cache's hits and tokens saved over every client; None when no
        client has a cache (off for every resource, or ``--no-cache``)."""
        caches = [c.cache for c in self.clients.values() if c.cache is not None]
        if not caches:
            return None
        total = CacheStats()
        for cache in caches:
            for field in msgspec.structs.fields(CacheStats):
                setattr(total, field.name,
                        getattr(total, field.name) + getattr(cache.stats, field.name))
        return total

    @property
    def completion_tokens(self) -> int:
        return sum(c.total_completion_tokens for c in self.clients.values())

    def usage_by_role(self) -> dict[str, Usage]:
        """Tokens per role over every client (a role uses one client; summed anyway)."""
        out: dict[str, Usage] = {}
        for c in self.clients.values():
            for role, u in c.usage_by_role().items():
                out[role] = out.get(role, Usage()) + u
        return out


def llm_config(res: LLMResource, urls: Sequence[str], where: str,
               key_where: str | None = None, *, registered: bool = False) -> LLMConfig:
    """The client settings of ``res``. ``where`` names the resource in messages;
    ``key_where`` the field that set ``api_key_env`` (default ``<where>.api_key_env``).

    Error handling: no endpoints, or an ``api_key_env`` naming a variable that is not
    set, is a one-line ``ConfigError`` (the variable's name, never its value).
    ``registered``: endpoints may come from the replica registry instead."""
    endpoints = list(urls) or list(res.endpoints)
    if not endpoints and not res.endpoints_file and not registered:
        raise ConfigError(f"{where}: no LLM endpoints (give --llm-url, or endpoints in the file)")
    if res.api_key_env is not None and not os.environ.get(res.api_key_env):
        field = key_where or f"{where}.api_key_env"
        of = f" (the key for {where.partition(': ')[2] or where})" if key_where else ""
        raise ConfigError(f"{field}: environment variable {res.api_key_env} is not set "
                          f"(or empty){of}")
    return LLMConfig(
        endpoints=endpoints,
        endpoints_file=res.endpoints_file,
        model=res.model,
        api_key_env=res.api_key_env or DEFAULT_KEY_ENV,
        timeout_s=res.timeout_s,
        max_retries=res.max_retries,
        initial_limit=res.initial_limit,
        max_limit=res.max_limit,
        sticky=res.sticky,
    )


def uses_llm(spec: WorkflowSpec, roles: Sequence[str]) -> bool:
    """Whether any of ``roles`` calls an LLM (else the fleet's key-value bucket is not opened)."""
    return any(spec.llm_for(role) is not None for role in roles)


@contextlib.asynccontextmanager
async def open_llms(
    spec: WorkflowSpec, roles: Sequence[str], urls: Sequence[str] = (),
    fleet: FleetState | None = None, recorder: AttemptRecorder | None = None,
    cache_bus: Bus | None = None,
    registry: ReplicaSource | None = None,
) -> AsyncIterator[LLMSet]:
    """Start the clients the given roles need; close them on exit.

    ``urls`` (from ``--llm-url``) replace every resource's endpoints.
    ``fleet`` (from ``open_fleet_state``) is shared by every client: what one
    learns about an endpoint (limit, Retry-After, ejection), the others apply.
    ``recorder`` (the process's ``Metrics``) counts requests, latency, limits and tokens.
    ``cache_bus``: where the response cache lives (the workflow's ``llm_cache_bucket``),
    for the resources that turn it on (``cache: true``); None (``--no-cache``): no cache.
    ``registry`` (from ``open_registry``): a resource that names no endpoints follows
    the replicas registered for its model.
    """
    clients: dict[str, LLMClient] = {}
    by_role: dict[str, ChatClient | None] = {}
    async with contextlib.AsyncExitStack() as stack:
        for role in roles:
            name = spec.roles[role].llm
            if name is None:
                by_role[role] = None
                continue
            # one client per resource; a role that sends its own API key gets its own
            # (the key is a header of the client's session); model settings are per call
            settings = spec.roles[role].llm_settings
            own_key = settings.api_key_env if settings is not None else None
            key = name if own_key is None else f"{name}[{own_key}]"
            if key not in clients:
                res = spec.resources.llm.get(name, LLMResource())
                if own_key is not None:
                    res = msgspec.structs.replace(res, api_key_env=own_key)
                where = f"{spec.path}: resources.llm.{name}"
                key_where = (f"{spec.path}: roles.{role}.llm_settings.api_key_env"
                             if own_key is not None else None)
                follows = registry is not None and not static_endpoints(res, urls)
                cfg = llm_config(res, urls, where, key_where, registered=follows)
                cache = None
                if res.cache and cache_bus is not None:
                    bucket = Names.of(spec).llm_cache_bucket
                    cache = ResponseCache(await cache_bus.key_value(bucket))
                client = LLMClient(cfg, fleet=fleet, recorder=recorder, cache=cache,
                                   registry=registry if follows else None)
                clients[key] = await stack.enter_async_context(client)
            by_role[role] = clients[key]
        yield LLMSet(clients, by_role)


@contextlib.asynccontextmanager
async def open_fleet_state(
    bus: Bus | None, *, enabled: bool = True, **options: Any
) -> AsyncIterator[FleetState | None]:
    """The LLM endpoint state this process shares with the fleet (a JetStream
    key-value bucket, see ``bus.fleet_kv``), or ``None`` when disabled.

    Usage: ``async with open_fleet_state(bus) as fleet, open_llms(..., fleet=fleet)``.
    Error handling: a broker problem never stops the workers: the state is
    loaded when the bucket can be read, and the watcher retries with backoff.
    """
    if bus is None or not enabled:
        yield None
        return
    async with bus.fleet_state(**options) as fleet:
        yield fleet


def static_endpoints(res: LLMResource, urls: Sequence[str]) -> bool:
    """Whether ``res`` has endpoints without the registry (flags, the file, its list)."""
    return bool(urls or res.endpoints or res.endpoints_file)


def registry_models(spec: WorkflowSpec, roles: Sequence[str],
                    urls: Sequence[str]) -> list[str | None] | None:
    """The models ``roles`` will look up in the replica registry (None: any model), or
    None when every LLM resource they use has endpoints of its own."""
    wanted: list[str | None] = []
    for role in roles:
        name = spec.roles[role].llm
        if name is None:
            continue
        res = spec.resources.llm.get(name, LLMResource())
        if not static_endpoints(res, urls) and res.model not in wanted:
            wanted.append(res.model)
    return wanted or None


@contextlib.asynccontextmanager
async def open_registry(bus: Bus, models: Sequence[str | None], *, wait_s: float,
                        where: str) -> AsyncIterator[ReplicaSource]:
    """Follow the fleet's replica registry; wait up to ``wait_s`` for a live replica
    of every model in ``models`` (None: any model).

    Error handling: a bus without JetStream, or a model nobody registered in time,
    is a one-line ``ConfigError`` saying what to start.
    """
    factory = getattr(bus, "replica_registry", None)
    if factory is None:
        raise ConfigError(f"{where}: no LLM endpoints, and this bus has no replica registry "
                          "(give --llm-url)")
    async with factory() as reg:
        deadline = asyncio.get_running_loop().time() + wait_s
        changed = asyncio.Event()
        unsubscribe = reg.subscribe(changed.set)
        try:
            while True:
                missing = [m for m in models
                           if not serving(reg.entries(), m, time.time())]
                if not missing:
                    break
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    what = ", ".join("any model" if m is None else f"model {m}" for m in missing)
                    raise ConfigError(
                        f"{where}: no LLM endpoints given and no replica serving {what} "
                        f"registered in bucket {reg.bucket} within {wait_s:g}s: run "
                        "`python -m matrix_p2p llm-register URL --nats ...` beside each model "
                        "server, or give --llm-url")
                changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, 1.0)):
                        await changed.wait()
        finally:
            unsubscribe()
        yield reg
