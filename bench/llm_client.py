"""Issue 3: our LLM client against two common patterns, on the same simulated fleet.

Closed-loop load: ``callers`` coroutines each send one chat request after
another (a 429 or 503 is retried after the server's ``Retry-After``, as
common clients do). The fleet has a bounded waiting queue (``max_waiting``
per replica), so overload is answered with 429. Clients, one after another
on the same fleet, each measured over the same window after a warm-up:

- ``llm_client``: ``matrix_p2p.llm.LLMClient`` (one session, adaptive
  per-endpoint concurrency, least-outstanding routing);
- ``fixed_semaphore``: one aiohttp session (no connector cap), an
  ``asyncio.Semaphore(N)`` around every request, round-robin over the
  replicas; N = the fleet's total batch slots (an oracle-tuned value, the
  best case for this pattern), plus N/4 and 4N to show the sensitivity;
- ``client_per_request``: a new ``aiohttp.ClientSession`` for every request,
  no cap.

Throughput and rejections are read from the simulator's own counters.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from bench.simfleet import SimFleet, delta, wait_idle
from matrix_p2p.llm import LLMClient, LLMConfig

MESSAGES = [{"role": "user", "content": "Tell me about continuous batching."}]


async def _closed_loop(call: Callable[[], Awaitable[None]], callers: int, warmup_s: float,
                       window_s: float, fleet: SimFleet) -> dict[str, Any]:
    stop = asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            await call()

    tasks = [asyncio.create_task(caller()) for _ in range(callers)]
    try:
        await asyncio.sleep(warmup_s)
        s0 = await fleet.stats()
        await asyncio.sleep(window_s)
        s1 = await fleet.stats()
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return delta(s0, s1)


async def _raw_post(session: aiohttp.ClientSession, url: str) -> None:
    body = {"model": "sim-model", "messages": MESSAGES, "max_tokens": 256}
    try:
        async with session.post(url + "/chat/completions", json=body,
                                timeout=aiohttp.ClientTimeout(total=120)) as r:
            await r.read()
            if r.status in (429, 503):
                await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
    except (aiohttp.ClientError, TimeoutError):
        await asyncio.sleep(0.5)


async def run_all(*, callers: int, warmup_s: float, window_s: float,
                  log: Callable[[str], None], all_semaphores: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with SimFleet(2, max_waiting=64) as fleet:
        slots = 2 * 256
        out["fleet"] = {"replicas": 2, "max_num_seqs": 256, "max_waiting": 64,
                        "callers": callers, "warmup_s": warmup_s, "window_s": window_s}

        # ours
        async with LLMClient(LLMConfig(endpoints=fleet.urls, model="sim-model",
                                       max_limit=2048)) as client:
            async def ours() -> None:
                await client.chat(MESSAGES, max_tokens=256)

            r = await _closed_loop(ours, callers, warmup_s, window_s, fleet)
            r["client_retries_hidden"] = "429s retried inside the client are counted by the sim"
            r["limits"] = {s.url: s.limit for s in client.snapshot()}
        out["llm_client"] = r
        log(f"  llm_client            {r['fraction_of_capacity']:.3f} of capacity, "
            f"{r['rejected_fraction']:.4f} rejected, limits {list(r['limits'].values())}")
        await wait_idle(fleet)

        # fixed semaphore, one shared session
        # the batch-sized semaphore is the best fixed setting; the others show why fixed fails
        for n in (slots, slots // 4, slots * 4) if all_semaphores else (slots,):
            conn = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=conn) as session:
                sem = asyncio.Semaphore(n)
                rr = itertools.cycle(fleet.urls)

                async def fixed(sem: asyncio.Semaphore = sem,
                                rr: itertools.cycle[str] = rr) -> None:
                    async with sem:
                        await _raw_post(session, next(rr))

                r = await _closed_loop(fixed, callers, warmup_s, window_s, fleet)
            r["semaphore"] = n
            out[f"fixed_semaphore_{n}"] = r
            log(f"  fixed_semaphore({n:>4})  {r['fraction_of_capacity']:.3f} of capacity, "
                f"{r['rejected_fraction']:.4f} rejected")
            await wait_idle(fleet)
        out["fixed_semaphore"] = out[f"fixed_semaphore_{slots}"]

        # a new session per request
        rr2 = itertools.cycle(fleet.urls)

        async def per_request() -> None:
            async with aiohttp.ClientSession() as session:
                await _raw_post(session, next(rr2))

        r = await _closed_loop(per_request, callers, warmup_s, window_s, fleet)
        out["client_per_request"] = r
        log(f"  client_per_request    {r['fraction_of_capacity']:.3f} of capacity, "
            f"{r['rejected_fraction']:.4f} rejected")
    return out


if __name__ == "__main__":
    import json

    t = time.time()
    res = asyncio.run(run_all(callers=2000, warmup_s=4, window_s=8, log=print))
    print(json.dumps(res, indent=1), time.time() - t)
