"""Profile the runtime hop: the dummy workflow served in-process, under pyinstrument.

Usage: ``python -m bench.profile_hop [TASKS]`` (``pip install pyinstrument``;
TASKS at most 1,000, the rows of the bundled dummy source). Prints hops/s, the
CPU time per hop and the profile of the worker's event loop.
"""

from __future__ import annotations

import asyncio
import sys
import time

from matrix_p2p.broker import EmbeddedNats
from matrix_p2p.bus import ConnectOptions, connect
from matrix_p2p.runtime.serve import serve_roles
from matrix_p2p.runtime.source import submit
from matrix_p2p.runtime.worker import WorkerStats
from matrix_p2p.workflow import loader


async def profile(tasks: int) -> None:
    from pyinstrument import Profiler  # optional: only this tool needs it

    server = EmbeddedNats(sync="interval").start()
    try:
        bus = await connect(ConnectOptions(url=server.url))
        spec = loader.load("dummy")
        await submit(bus, spec, limit=tasks)
        stop = asyncio.Event()
        stats = WorkerStats()
        profiler = Profiler(interval=0.0005, async_mode="disabled")
        t0, c0 = time.perf_counter(), time.process_time()
        profiler.start()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(serve_roles(bus, spec, list(spec.roles), llm_for={}, stop=stop,
                                       stats=stats))
            while stats.done + stats.failed < tasks:  # sampling a counter, bounded by the tasks
                await asyncio.sleep(0.05)
            stop.set()
        profiler.stop()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"{stats.hops} hops in {wall:.2f}s = {stats.hops / wall:,.0f} hops/s; "
              f"cpu {cpu:.2f}s = {1e6 * cpu / max(stats.hops, 1):.0f} us/hop")
        print(profiler.output_text(unicode=False, color=False))
        await bus.close()
    finally:
        server.cleanup()


if __name__ == "__main__":
    asyncio.run(profile(min(1000, int(sys.argv[1]) if len(sys.argv) > 1 else 800)))
