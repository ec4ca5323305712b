"""``python -m bench.broker_state [--n 60000]``: what nats-server keeps in memory per
finished task, by kind of state.

Starts a bare nats-server (fsync interval) and, for each kind of per-task state a run
leaves behind, adds N items in two steps (N/3, then the rest) and reads the server's
RSS from ``/proc`` after each step, once its block caches have expired. The slope
between the two readings is the per-item cost (a fixed cost, such as a block's cache,
does not show in it):

- ``dedup``: publishes with a msg-id (``<task>:<hop>``, a hop's publish) to a stream
  with the runtime's duplicate window: the server keeps every id for the window;
- ``kv``: keys created in a key-value bucket (the ``SUBMITTED`` bucket's shape: one
  key per task, kept for the whole run);
- ``results``: 2 KiB messages on a limits stream without msg-ids (the results
  stream's shape: kept for replay and rebuild).

Not part of the test suite (a minute or two).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import harness
from matrix_p2p.bus import StreamDef
from matrix_p2p.runtime.topology import DUPLICATE_WINDOW_S

SETTLE_S = 12.0  # longer than nats-server's block cache expiry


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _settled(pid: int) -> int:
    await asyncio.sleep(SETTLE_S)  # let the server drop its caches (a benchmark, not a test)
    return rss_kb(pid)


async def _add(op: Callable[[int], Awaitable[Any]], lo: int, hi: int, par: int = 256) -> None:
    sem = asyncio.Semaphore(par)

    async def one(i: int) -> None:
        async with sem:
            await op(i)

    for start in range(lo, hi, 5_000):
        await asyncio.gather(*(one(i) for i in range(start, min(hi, start + 5_000))))


async def measure(n: int) -> dict[str, Any]:
    out: dict[str, Any] = {"n": n, "duplicate_window_s": DUPLICATE_WINDOW_S}
    third = n // 3
    async with harness.broker("interval") as (server, bus):
        pid = server.pid
        assert pid is not None

        async def kind(name: str, op: Callable[[int], Awaitable[Any]]) -> None:
            before = await _settled(pid)
            await _add(op, 0, third)
            mid = await _settled(pid)
            await _add(op, third, n)
            after = await _settled(pid)
            out[name] = {"rss_mb": [round(x / 1024, 1) for x in (before, mid, after)],
                         "bytes_per_item": round((after - mid) * 1024 / (n - third))}
            print(name, out[name], flush=True)

        await bus.ensure_stream(StreamDef(name="D", subjects=["d.>"], retention="limits",
                                          duplicate_window_s=DUPLICATE_WINDOW_S, replicas=None))
        await kind("dedup", lambda i: bus.publish("d.x", b"x", msg_id=f"s{i:07d}-t0:1"))
        kv = await bus.key_value("K")
        await kind("kv", lambda i: kv.create(f"s{i:07d}-t0"))
        await bus.ensure_stream(StreamDef(name="R", subjects=["r.>"], retention="limits",
                                          duplicate_window_s=1.0, replicas=None))
        body = b"r" * 2048
        await kind("results", lambda i: bus.publish("r.done", body))
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.broker_state", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60_000)
    args = p.parse_args()
    print(json.dumps(asyncio.run(measure(args.n)), indent=1))


if __name__ == "__main__":
    main()
