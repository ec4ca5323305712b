"""A workflow's LLM resources as live clients: one ``LLMClient`` per resource, shared by roles,
and the fleet-wide endpoint state those clients share with every other worker."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from matrix_p2p.agent import ChatClient
from matrix_p2p.bus import Bus
from matrix_p2p.envelope import Usage
from matrix_p2p.errors import ConfigError
from matrix_p2p.llm import FleetState, LLMClient, LLMConfig
from matrix_p2p.llm.outcomes import AttemptRecorder
from matrix_p2p.workflow.spec import LLMResource, WorkflowSpec


class LLMSet:
    """The clients of one process, and which role uses which."""

    def __init__(self, clients: dict[str, LLMClient], by_role: dict[str, ChatClient | None]) -> None:
        self.clients = clients
        self.by_role = by_role

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


def llm_config(res: LLMResource, urls: Sequence[str], where: str) -> LLMConfig:
    endpoints = list(urls) or list(res.endpoints)
    if not endpoints and not res.endpoints_file:
        raise ConfigError(f"{where}: no LLM endpoints (give --llm-url, or endpoints in the file)")
    return LLMConfig(
        endpoints=endpoints,
        endpoints_file=res.endpoints_file,
        model=res.model,
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
) -> AsyncIterator[LLMSet]:
    """Start the clients the given roles need; close them on exit.

    ``urls`` (from ``--llm-url``) replace every resource's endpoints.
    ``fleet`` (from ``open_fleet_state``) is shared by every client: what one
    learns about an endpoint (limit, Retry-After, ejection), the others apply.
    ``recorder`` (the process's ``Metrics``) counts requests, latency, limits and tokens.
    """
    clients: dict[str, LLMClient] = {}
    by_role: dict[str, ChatClient | None] = {}
    async with contextlib.AsyncExitStack() as stack:
        for role in roles:
            name = spec.roles[role].llm
            if name is None:
                by_role[role] = None
                continue
            if name not in clients:
                res = spec.resources.llm.get(name, LLMResource())
                cfg = llm_config(res, urls, f"{spec.path}: resources.llm.{name}")
                client = LLMClient(cfg, fleet=fleet, recorder=recorder)
                clients[name] = await stack.enter_async_context(client)
            by_role[role] = clients[name]
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
