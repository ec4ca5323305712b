"""One ``Metrics`` across workers, source and sink in one process (as in ``run``): its counts agree
exactly with the workers' own stats and the sink's rows, on the in-memory bus and on nats-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from matrix_p2p.bus import Bus
from matrix_p2p.metrics import Metrics
from matrix_p2p.runtime.serve import serve_roles
from matrix_p2p.runtime.sink import Sink
from matrix_p2p.runtime.source import submit
from matrix_p2p.runtime.topology import ensure_workflow
from matrix_p2p.runtime.worker import WorkerStats
from tests.conftest import DUMMY_YAML, make_spec


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(m.render().decode()) for s in f.samples}


async def test_one_registry_counts_every_hop_and_result(any_bus: Bus, tmp_path: Path) -> None:
    n = 60
    spec = make_spec(tmp_path, DUMMY_YAML, [{"n": i} for i in range(n)])
    m, stats, stop = Metrics(), WorkerStats(), asyncio.Event()
    sink = Sink(any_bus, spec, tmp_path / "out.jsonl", metrics=m)
    names = await ensure_workflow(any_bus, spec)
    async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
        # The sink's consumer must be the one that reads every result: a result that is
        # already in the stream when the sink opens is written by its rebuild, which does
        # not count it (sink.done, the finished and rows-written metrics). So the sink is
        # serving before the first task is submitted.
        sink_ready = asyncio.Event()
        written = tg.create_task(sink.run(asyncio.Event(), expect=n, ready=sink_ready))
        await sink_ready.wait()
        workers = tg.create_task(serve_roles(any_bus, spec, list(spec.roles), llm_for={}, stop=stop,
                                             stats=stats, metrics=m))
        # before any student task: it is fetched before them, so the drain on stop covers it
        await any_bus.publish(names.task("student"), b"\x00garbage")
        await submit(any_bus, spec, metrics=m)
        assert await written == n
        stop.set()
        await workers
    s = samples(m)

    def hops(outcome: str) -> float:
        return sum(v for (name, labels), v in s.items()
                   if name == "matrix_p2p_hops_total" and ("outcome", outcome) in labels)

    assert hops("forwarded") == stats.forwarded > 0
    assert hops("done") == stats.done == sink.done
    assert hops("failed") == stats.failed
    assert hops("dead_lettered") == stats.dead_lettered == 1
    assert s[("matrix_p2p_dead_letters_total", (("consumer", "student"),))] == 1
    total = sum(hops(o) for o in ("forwarded", "done", "failed", "retried", "dead_lettered",
                                  "publish_error"))
    assert total == stats.hops + 1  # + the garbage, which never reached an agent
    assert sum(v for (name, _), v in s.items() if name == "matrix_p2p_hop_seconds_count") == total
    assert all(v == 0 for (name, _), v in s.items() if name == "matrix_p2p_tasks_inflight")
    assert s[("matrix_p2p_tasks_finished_total", (("status", "done"),))] == sink.done
    assert s[("matrix_p2p_sink_rows_written_total", ())] == n
    assert s[("matrix_p2p_source_tasks_submitted_total", ())] == n
    # the consumer gauges were read once at start (every 15 s after): one series per role
    assert {labels for (name, labels) in s if name == "matrix_p2p_consumer_pending"} == {
        (("role", r),) for r in spec.roles}
