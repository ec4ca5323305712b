"""Issue 20: routing on published load against least-outstanding routing.

Simulator replicas of unequal speed (``SLOW``: step-time factors), several
workers (one ``LLMClient`` each, as separate worker processes would have),
each with closed-loop callers. Two runs on fresh replicas, same load:

- ``least_outstanding``: static endpoints, today's choice (``pool.select``:
  fewest of *this worker's* requests in flight);
- ``published_load``: the endpoints come from the replica registry, fed by one
  ``Registrar`` per replica that scrapes its ``/metrics`` every second; the
  choice is ``scoring.choose`` (published queue, our own count, stickiness).

Each worker pins every caller's requests to a sticky key, as tasks do. A
second scenario adds another tenant's callers on the first replica (load our
clients' own counts cannot see). Throughput, mean and p95 latency of our
requests are measured over the same window after a warm-up; the table prints
both routings and their ratio.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from matrix_p2p.llm import LLMClient, LLMConfig, LLMResponse
from matrix_p2p.llm.registrar import Registrar
from matrix_p2p.llm.registry import Registration
from matrix_p2p.sim.config import SimConfig
from matrix_p2p.sim.server import SimServer, start_sim

SLOW = (1.0, 1.0, 3.0)
OUTPUT_TOKENS = 32
MESSAGES = [{"role": "user", "content": "Tell me about continuous batching."}]


class _Registry:
    """An in-process registry: the registrars write, the clients follow."""

    def __init__(self) -> None:
        self._entries: dict[str, Registration] = {}
        self._subs: list[Callable[[], None]] = []

    async def put(self, reg: Registration) -> None:
        self._entries[reg.url] = reg
        for cb in list(self._subs):
            cb()

    async def delete(self, url: str) -> None:
        self._entries.pop(url, None)

    def entries(self) -> list[Registration]:
        return list(self._entries.values())

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._subs.append(callback)
        return lambda: self._subs.remove(callback)


async def _one(mode: str, *, workers: int, callers: int, warmup_s: float, window_s: float,
               max_num_seqs: int, tenant: int = 0, load: float | None = None) -> dict[str, Any]:
    """``load`` None: ``callers`` closed-loop sticky callers per worker; else open-loop
    Poisson arrivals (one-request tasks) at that fraction of the fleet's capacity."""
    sims: list[SimServer] = []
    for i, slow in enumerate(SLOW):
        cfg = SimConfig(seed=i, slow_factor=slow, max_num_seqs=max_num_seqs,
                        output_tokens="fixed", output_tokens_mean=OUTPUT_TOKENS)
        sims.append(await start_sim(cfg))
    registry = _Registry()
    stop = asyncio.Event()
    scrapers: list[asyncio.Task[None]] = []
    try:
        if mode == "published_load":
            for s in sims:
                r = Registrar(s.url, registry, interval_s=1.0, max_num_seqs=max_num_seqs)
                scrapers.append(asyncio.create_task(r.run(stop)))
            async with asyncio.timeout(10):
                while len(registry.entries()) < len(sims):
                    await asyncio.sleep(0.05)
        # static endpoints in URL order, the order the scoring rule breaks ties in: no
        # routing wins by where the slow replica happens to stand in a list
        static = sorted(s.url for s in sims)
        cfg = LLMConfig(endpoints=[] if mode == "published_load" else static,
                        model=sims[0].config.model, metrics_poll_s=None)
        clients = [LLMClient(cfg, registry=registry if mode == "published_load" else None)
                   for _ in range(workers)]
        for c in clients:
            await c.start()
        latencies: list[float] = []
        measuring = False
        done = 0

        async def caller(client: LLMClient, key: str) -> None:
            nonlocal done
            while not stop.is_set():
                t0 = time.monotonic()
                res = await client.chat(MESSAGES, sticky_key=key)
                if measuring and isinstance(res, LLMResponse):
                    latencies.append(time.monotonic() - t0)
                    done += 1

        async def one_request(client: LLMClient) -> None:
            nonlocal done
            t0 = time.monotonic()
            res = await client.chat(MESSAGES)
            if measuring and isinstance(res, LLMResponse):
                latencies.append(time.monotonic() - t0)
                done += 1

        async def arrivals(client: LLMClient, rate: float, seed: int) -> None:
            rng = random.Random(seed)
            async with asyncio.TaskGroup() as tg:
                while not stop.is_set():
                    await asyncio.sleep(rng.expovariate(rate))
                    tg.create_task(one_request(client))

        if load is None:
            tasks = [asyncio.create_task(caller(c, f"w{w}-c{i}"))
                     for w, c in enumerate(clients) for i in range(callers)]
        else:
            tokens = sum(x.config.capacity_tokens_per_s() for x in sims)
            rate = load * tokens / OUTPUT_TOKENS / workers  # requests/s per worker
            tasks = [asyncio.create_task(arrivals(c, rate, w)) for w, c in enumerate(clients)]
        # another tenant's load on the first replica, which our clients do not see
        other = LLMClient(LLMConfig(endpoints=[sims[0].url], model=sims[0].config.model,
                                    metrics_poll_s=None))
        await other.start()

        async def tenant_caller() -> None:
            while not stop.is_set():
                await other.chat(MESSAGES)

        tasks += [asyncio.create_task(tenant_caller()) for _ in range(tenant)]
        await asyncio.sleep(warmup_s)
        measuring = True
        await asyncio.sleep(window_s)
        measuring = False
        stop.set()
        await asyncio.gather(*tasks)
        by_replica = {s.base_url: sum(st.successes for c in clients for st in c.snapshot()
                                      if st.url == s.base_url) for s in sims}
        errors: dict[str, int] = {}
        for c in clients:
            for st in c.snapshot():
                for kind, n in st.errors_by_kind.items():
                    errors[kind] = errors.get(kind, 0) + n
        for c in [*clients, other]:
            await c.close()
    finally:
        stop.set()
        await asyncio.gather(*scrapers, return_exceptions=True)
        for s in sims:
            await s.stop()
    lat = sorted(latencies)
    return {"mode": mode, "requests_per_s": done / window_s, "errors": errors,
            "mean_latency_s": statistics.fmean(lat) if lat else float("nan"),
            "p95_latency_s": lat[int(0.95 * (len(lat) - 1))] if lat else float("nan"),
            "share_by_slow_factor": {f"x{slow:g}#{i}": by_replica[s.base_url]
                                     for i, (slow, s) in enumerate(zip(SLOW, sims, strict=True))}}


SCENARIOS: tuple[tuple[str, int, float | None], ...] = (
    # name, another tenant's callers on the first replica, open-loop load (None: closed loop)
    ("closed_loop", 0, None),
    ("closed_loop_plus_tenant", 16, None),
    ("open_loop_60pct", 0, 0.6),
    ("open_loop_60pct_plus_tenant", 8, 0.6),
)


async def compare(*, workers: int = 4, callers: int = 12, warmup_s: float = 3.0,
                  window_s: float = 10.0, max_num_seqs: int = 8,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Both routings on the same load, one after the other, per scenario; the figures
    and their ratio (published load / least outstanding)."""
    out: dict[str, Any] = {}
    log(f"  replicas slow x{SLOW}, batch {max_num_seqs}, {OUTPUT_TOKENS} tokens a request; "
        f"{workers} workers; closed loop: {callers} sticky callers each; open loop: "
        "Poisson arrivals at a share of the fleet's capacity; tenant: another client's "
        "callers on replica #0, unseen by ours")
    log(f"  {'scenario':28} {'figure':15} {'least_outst.':>12} {'published':>10} {'ratio':>6}")
    for scenario, tenant, load in SCENARIOS:
        runs = {}
        for mode in ("least_outstanding", "published_load"):
            runs[mode] = await _one(mode, workers=workers, callers=callers, warmup_s=warmup_s,
                                    window_s=window_s, max_num_seqs=max_num_seqs,
                                    tenant=tenant, load=load)
        lo, pl = runs["least_outstanding"], runs["published_load"]
        for k in ("requests_per_s", "mean_latency_s", "p95_latency_s"):
            ratio = pl[k] / lo[k] if lo[k] else float("nan")
            log(f"  {scenario:28} {k:15} {lo[k]:12.3f} {pl[k]:10.3f} {ratio:6.3f}")
        log(f"  {scenario:28} ours by replica: least_outstanding {lo['share_by_slow_factor']}, "
            f"published {pl['share_by_slow_factor']}")
        out[scenario] = {"runs": runs, "ratio": {
            k: (pl[k] / lo[k] if lo[k] else None)
            for k in ("requests_per_s", "mean_latency_s", "p95_latency_s")}}
    return out
