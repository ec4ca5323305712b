"""The exactly-once check, run inside a host (it must reach the cluster from there).

``python -m tests.hosts.check WORKFLOW URLS`` reads the results stream itself (not the
sink's deduplicated file) and exits 1 with ``tests.invariants.assert_exactly_once``'s
message, which names every lost, doubled or unknown task; it also fails when tasks are
left in the task stream. Prints one JSON line of counts on success."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path

from matrix_p2p.bus import ConnectOptions, connect
from matrix_p2p.runtime.topology import Names
from matrix_p2p.workflow import loader
from tests.chaos.harness import expected_ids
from tests.invariants import assert_exactly_once, stored_tasks


async def check(workflow: str, urls: str) -> dict[str, int]:
    spec = loader.load(workflow)
    names = Names.of(spec)
    bus = await connect(ConnectOptions(url=urls, name="hosts-check"))
    try:
        results = await stored_tasks(bus, names.results_stream)
        left = await stored_tasks(bus, names.tasks_stream)
    finally:
        await bus.close()
    assert_exactly_once(results, expected_ids(Path(workflow)), step="the partitioned run")
    assert not left, f"tasks left in {names.tasks_stream}: {sorted({t.id for t in left})}"
    return dict(Counter(t.status for t in results))


def main() -> int:
    try:
        counts = asyncio.run(check(sys.argv[1], sys.argv[2]))
    except AssertionError as e:
        print(str(e), file=sys.stderr)
        return 1
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
