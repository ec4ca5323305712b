"""A worker process of the central-coordinator baseline: executes steps it is sent.

``python -m bench.central_worker PORT WORKFLOW``: connects to the coordinator,
reads length-prefixed envelopes, runs one step of each concurrently (agent +
routing, as ``bench.baselines.Steps``) and writes the next envelope back.
"""

from __future__ import annotations

import asyncio
import sys

from bench.baselines import Steps, _client, _frame, _read_frame
from matrix_p2p import envelope
from matrix_p2p.envelope import Task
from matrix_p2p.workflow.loader import load


async def main(port: int, path: str) -> None:
    spec = load(path)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    print("central.ready", flush=True)
    async with _client(spec) as llm:
        steps = Steps(spec, llm)

        running: set[asyncio.Task[None]] = set()

        async def one(task: Task) -> None:
            nxt = await steps.step(task)
            writer.write(_frame(envelope.encode(nxt)))

        while True:
            try:
                data = await _read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            t = asyncio.create_task(one(envelope.decode(data)))
            running.add(t)
            t.add_done_callback(running.discard)
        # the coordinator is gone: nothing left to report to
        for t in list(running):
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main(int(sys.argv[1]), sys.argv[2]))
    except ImportError:
        asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
