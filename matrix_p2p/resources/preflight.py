"""Preflight: before a run or a worker starts, the servers it needs answer.

``run``, ``worker`` and the API's ``run_async``/``serve`` ask every LLM endpoint
(``GET /v1/models``, ``llm/probe.py``) and every sandbox server (``GET /healthz``,
``sandbox/client.py``) their roles will use, all at once with a short timeout,
and log which models each serves. Then ``judge`` (pure) decides:

- an LLM resource none of whose endpoints answers, or that names a ``model``
  no answering endpoint serves, or a sandbox resource a served role leases with
  no server answering: a ``ConfigError`` (one line, exit status 2) before
  anything is submitted or fetched;
- some endpoints or servers down while others answer, an endpoint that answers
  but does not serve the named model, a braked sandbox pool: a warning each, and
  the run goes on.

``--no-preflight`` (``preflight=False`` in the API) skips it. ``run`` does not
probe the simulator or the sandbox server it starts itself: they are up by
construction, and the simulator answers any model name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec
import structlog

from matrix_p2p.errors import ConfigError
from matrix_p2p.llm.client import session_headers
from matrix_p2p.llm.pool import normalise_url
from matrix_p2p.llm.probe import PROBE_TIMEOUT_S, EndpointProbe, probe_endpoints
from matrix_p2p.llm.wire import parse_endpoints_file
from matrix_p2p.resources.llm import llm_config, static_endpoints
from matrix_p2p.sandbox.client import Health, probe_health
from matrix_p2p.workflow.spec import LLMResource, WorkflowSpec

log = structlog.get_logger(__name__)

SKIP_HINT = "(--no-preflight skips this check)"


class LLMNeed(msgspec.Struct, frozen=True, kw_only=True):
    """One LLM resource the served roles use, and the endpoints it will call."""

    resource: str  # its name under resources.llm
    where: str  # what the user edits to fix it: --llm-url, or the file and field
    roles: tuple[str, ...]
    urls: tuple[str, ...]  # normalised
    model: str | None = None  # None: whatever each endpoint serves first
    headers: tuple[tuple[str, str], ...] = ()  # for the probe (the API key)


class SandboxNeed(msgspec.Struct, frozen=True, kw_only=True):
    resource: str  # its name under resources.sandbox
    where: str
    urls: tuple[str, ...]
    required: bool  # a served role leases it (else a worker only releases its leases)


class Verdict(msgspec.Struct, kw_only=True):
    error: str | None = None  # the ConfigError's one line
    warnings: list[str] = msgspec.field(default_factory=list)


def _served(probes: Sequence[EndpointProbe]) -> str:
    return "; ".join(f"{p.url} serves {', '.join(p.models)}" for p in probes)


def judge(llm: Sequence[LLMNeed], sandboxes: Sequence[SandboxNeed],
          endpoints: Mapping[str, EndpointProbe], servers: Mapping[str, Health]) -> Verdict:
    """Whether the run may start, from what every endpoint and server answered. Pure."""
    v = Verdict()
    down: dict[str, str] = {}  # url -> error, warned once however many resources use it
    for need in llm:
        probes = [endpoints[u] for u in need.urls if u in endpoints]
        up = [p for p in probes if p.ok]
        if not up:
            errors = "; ".join(p.error or "" for p in probes)
            v.error = v.error or (
                f"{need.where}: no LLM endpoint answers (roles {', '.join(need.roles)}): "
                f"{errors}; is the server up? {SKIP_HINT}")
            continue
        down.update((p.url, p.error) for p in probes if p.error is not None)
        if need.model is None:
            continue
        serving = [p for p in up if need.model in p.models]
        if not serving:
            v.error = v.error or (
                f"{need.where}: model {need.model!r} (resources.llm.{need.resource}.model) is "
                f"not served by any endpoint that answers: {_served(up)} {SKIP_HINT}")
            continue
        v.warnings.extend(
            f"{p.url} does not serve model {need.model!r} (it serves {', '.join(p.models)}): "
            f"requests of resources.llm.{need.resource} sent there will fail"
            for p in up if p not in serving)
    if down:
        v.warnings.append("LLM endpoint(s) not answering, going on with the others: "
                          + "; ".join(down.values()))
    sbx_down: dict[str, str] = {}
    for sneed in sandboxes:
        health = [servers[u] for u in sneed.urls if u in servers]
        alive = [h for h in health if h.error is None]
        if not alive:
            errors = "; ".join(h.error or "" for h in health)
            if sneed.required:
                v.error = v.error or (
                    f"{sneed.where}: no sandbox server answers (resources.sandbox."
                    f"{sneed.resource}): {errors}; start one with `python -m matrix_p2p "
                    f"sandbox-server` {SKIP_HINT}")
            else:
                v.warnings.append(f"no sandbox server of resources.sandbox.{sneed.resource} "
                                  f"answers (no role served here leases it): {errors}")
            continue
        sbx_down.update((h.url, h.error) for h in health if h.error is not None)
        v.warnings.extend(f"sandbox server {h.url} answers but its pool is braked (its "
                          "sandboxes failed their health checks): acquires wait"
                          for h in alive if h.braked)
    if sbx_down:
        v.warnings.append("sandbox server(s) not answering, going on with the others: "
                          + "; ".join(sbx_down.values()))
    return v


def plan(spec: WorkflowSpec, roles: Sequence[str], *, llm_urls: Sequence[str] = (),
         sandbox_urls: Sequence[str] = (), llm: bool = True, sandboxes: bool = True,
         registry: bool = False) -> tuple[list[LLMNeed], list[SandboxNeed]]:
    """What the served ``roles`` will call: the URLs as ``open_llms`` and
    ``open_sandboxes`` will use them (``llm_urls``/``sandbox_urls`` replace the file's).
    A resource whose endpoints come only from an endpoints file that is empty or missing
    now is left out: its endpoints may come later (the file is watched)."""
    llm_needs: list[LLMNeed] = []
    by_resource: dict[str, list[str]] = {}
    for role in roles:
        name = spec.roles[role].llm
        if llm and name is not None:
            by_resource.setdefault(name, []).append(role)
    for name, users in by_resource.items():
        res = spec.resources.llm.get(name, LLMResource())
        if registry and not static_endpoints(res, llm_urls):
            continue  # the replica registry: its registrars checked the servers
        where = "--llm-url" if llm_urls else f"{spec.path}: resources.llm.{name}"
        cfg = llm_config(res, llm_urls, f"{spec.path}: resources.llm.{name}")
        urls = list(cfg.endpoints)
        if not urls and cfg.endpoints_file:
            try:
                urls = parse_endpoints_file(Path(cfg.endpoints_file).read_text())
            except OSError:
                urls = []
            where = f"{cfg.endpoints_file} (resources.llm.{name}.endpoints_file)"
        if not urls:
            log.info("preflight.skipped", resource=f"resources.llm.{name}",
                     detail=f"no endpoints in {cfg.endpoints_file} yet")
            continue
        llm_needs.append(LLMNeed(
            resource=name, where=where, roles=tuple(users), model=cfg.model,
            urls=tuple(dict.fromkeys(normalise_url(u) for u in urls)),
            headers=tuple(sorted(session_headers(cfg).items()))))
    sandbox_needs: list[SandboxNeed] = []
    if sandboxes:
        leased = {r for role in roles for r in spec.roles[role].resources}
        for name, sres in spec.resources.sandbox.items():
            urls = [u.rstrip("/") for u in (list(sandbox_urls) or sres.urls)]
            if urls:  # none at all: open_sandboxes says so in its own words
                where = "--sandbox-url" if sandbox_urls else f"{spec.path}: resources.sandbox.{name}"
                sandbox_needs.append(SandboxNeed(resource=name, where=where, urls=tuple(urls),
                                                 required=name in leased))
    return llm_needs, sandbox_needs


async def preflight(spec: WorkflowSpec, roles: Sequence[str], *, llm_urls: Sequence[str] = (),
                    sandbox_urls: Sequence[str] = (), llm: bool = True, sandboxes: bool = True,
                    timeout_s: float = PROBE_TIMEOUT_S, registry: bool = False) -> Verdict:
    """Probe what ``roles`` will use (``llm``/``sandboxes`` False: not that kind), log it,
    warn about what is down, and raise ``ConfigError`` when the run cannot work.

    Error handling: nothing is retried (a server that does not answer within
    ``timeout_s`` is down for this check); the only exception is ``ConfigError``.
    """
    llm_needs, sandbox_needs = plan(spec, roles, llm_urls=llm_urls, sandbox_urls=sandbox_urls,
                                    llm=llm, sandboxes=sandboxes, registry=registry)
    groups: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for need in llm_needs:  # one probe per URL (per API key)
        groups.setdefault(need.headers, []).extend(need.urls)
    sandbox_list = list(dict.fromkeys(u for s in sandbox_needs for u in s.urls))
    async with asyncio.TaskGroup() as tg:
        llm_tasks = [tg.create_task(probe_endpoints(urls, headers=dict(h), timeout_s=timeout_s))
                     for h, urls in groups.items()]
        sbx_task = tg.create_task(probe_health(sandbox_list, timeout_s=timeout_s))
    endpoints = {p.url: p for t in llm_tasks for p in t.result()}
    servers = {h.url: h for h in sbx_task.result()}
    for p in endpoints.values():
        if p.ok:
            log.info("preflight.llm", url=p.url, models=list(p.models))
    for h in servers.values():
        if h.error is None:
            log.info("preflight.sandbox", url=h.url, free=h.free)
    verdict = judge(llm_needs, sandbox_needs, endpoints, servers)
    if verdict.error is not None:
        raise ConfigError(verdict.error)
    for w in verdict.warnings:
        log.warning("preflight.warning", detail=w)
    return verdict
