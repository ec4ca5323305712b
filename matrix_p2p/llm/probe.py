"""Ask LLM endpoints, once and quickly, whether they answer and which models they serve.

``run`` and ``worker`` call it at start (``resources/preflight.py``), before any
task is submitted or fetched: a closed port or a wrong model name is then one
line and exit status 2, not every task failing a minute later. One short-lived
session, every endpoint at once, ``GET /v1/models`` (what vLLM and the
simulator serve) with a short timeout; the answer is decoded by ``wire`` as the
client's is. aiohttp's errors are translated here, once, into
``EndpointProbe.error``: nothing raises but cancellation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import aiohttp
import msgspec

from matrix_p2p.llm import wire
from matrix_p2p.llm.pool import normalise_url

PROBE_TIMEOUT_S = 5.0


class EndpointProbe(msgspec.Struct, frozen=True, kw_only=True):
    """What one endpoint said. ``error`` (naming the URL) is None when it answered
    ``/v1/models`` with at least one model."""

    url: str  # normalised, without /v1
    models: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


async def probe_endpoints(urls: Sequence[str], *, headers: Mapping[str, str] | None = None,
                          timeout_s: float = PROBE_TIMEOUT_S) -> list[EndpointProbe]:
    """``GET <url>/v1/models`` on every URL concurrently, each within ``timeout_s``.
    One result per distinct normalised URL, in the order given."""
    distinct = list(dict.fromkeys(normalise_url(u) for u in urls))
    if not distinct:
        return []
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(headers=dict(headers or {}), timeout=timeout) as session:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(_probe(session, url, timeout_s)) for url in distinct]
    return [t.result() for t in tasks]


async def _probe(session: aiohttp.ClientSession, url: str, timeout_s: float) -> EndpointProbe:
    try:
        async with session.get(url + wire.MODELS_PATH) as resp:
            status, raw = resp.status, await resp.read()
    except TimeoutError:
        return EndpointProbe(url=url, error=f"{url}: no answer within {timeout_s:g}s")
    except aiohttp.ClientConnectorError as exc:
        why = exc.os_error.strerror or str(exc.os_error)
        return EndpointProbe(url=url, error=f"{url}: cannot connect ({why})")
    except (aiohttp.ClientError, OSError) as exc:
        return EndpointProbe(url=url, error=f"{url}: {type(exc).__name__}: {exc}")
    if status != 200:
        text = " ".join(raw[:120].decode(errors="replace").split())  # one line
        return EndpointProbe(url=url, error=f"{url}: GET {wire.MODELS_PATH}: HTTP {status}"
                                            + (f" {text}" if text else ""))
    try:
        models = wire.decode_models(raw)
    except wire.BadResponse as exc:
        return EndpointProbe(url=url, error=f"{url}: {exc}")
    if not models:
        return EndpointProbe(url=url, error=f"{url}: GET {wire.MODELS_PATH}: serves no models")
    return EndpointProbe(url=url, models=tuple(models))
