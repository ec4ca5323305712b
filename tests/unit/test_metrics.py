"""Metrics: the exported names and values, the fast hop path against prometheus_client's own
histogram, the consumer poll, the HTTP endpoint, and NullMetrics."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Mapping

import msgspec
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from matrix_p2p.errors import BusError, ConfigError
from matrix_p2p.metrics import HOP_BUCKETS, OUTCOMES, Metrics, NullMetrics, serve


def samples(m: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of one series name, keyed by their sorted labels."""
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_hops_by_role_and_outcome() -> None:
    m = Metrics()
    judge = m.role("judge")
    assert m.role("judge") is judge  # bound once, reused on the hot path
    for _ in range(3):
        judge.hop_started()
    judge.hop_done(0.02, "forwarded")
    judge.hop_done(0.5, "done")
    m.role("teacher")
    hops = samples(m, "matrix_p2p_hops_total")
    assert hops[(("outcome", "forwarded"), ("role", "judge"))] == 1
    assert hops[(("outcome", "done"), ("role", "judge"))] == 1
    # every outcome of every role exists from the start at zero, so rate() works at once
    assert len(hops) == 2 * len(OUTCOMES)
    assert hops[(("outcome", "publish_error"), ("role", "teacher"))] == 0
    assert samples(m, "matrix_p2p_tasks_inflight") == {(("role", "judge"),): 1,
                                                      (("role", "teacher"),): 0}
    assert samples(m, "matrix_p2p_hop_seconds_count")[(("role", "judge"),)] == 2
    assert samples(m, "matrix_p2p_hop_seconds_sum")[(("role", "judge"),)] == pytest.approx(0.52)


def test_unknown_outcome_raises_and_records_nothing() -> None:
    rm = Metrics().role("judge")
    rm.hop_started()
    with pytest.raises(KeyError, match="finished"):
        rm.hop_done(1.0, "finished")
    assert rm.inflight == 1 and sum(rm.buckets) == 0 and rm.seconds_sum == 0


def test_hop_histogram_matches_prometheus_client() -> None:
    values = [0.0, 0.001, 0.0010001, 0.3, 1.0, 7.5, 599.0, 600.0, 601.0, 10_000.0]
    m = Metrics()
    rm = m.role("r")
    reference_registry = CollectorRegistry()
    reference = Histogram("matrix_p2p_hop_seconds", "x", ["role"], buckets=HOP_BUCKETS,
                          registry=reference_registry).labels("r")
    for v in values:
        rm.hop_started()
        rm.hop_done(v, "done")
        reference.observe(v)

    def series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) if f.name == "matrix_p2p_hop_seconds"
                for s in f.samples if not s.name.endswith("_created")}

    ours, theirs = series(m.render().decode()), series(generate_latest(reference_registry).decode())
    assert ours == pytest.approx(theirs)
    assert len(ours) == len(HOP_BUCKETS) + 1 + 2  # buckets, +Inf, sum, count


def test_tokens_and_dead_letters() -> None:
    m = Metrics()
    judge = m.role("judge")
    judge.tokens(100, 20)
    judge.tokens(50, 5)
    judge.hop_started()
    judge.hop_done(0.1, "dead_lettered")
    m.dead_lettered("sink")
    m.dead_lettered("sink")
    assert samples(m, "matrix_p2p_llm_tokens_total") == {
        (("kind", "prompt"), ("role", "judge")): 150,
        (("kind", "completion"), ("role", "judge")): 25,
    }
    assert samples(m, "matrix_p2p_dead_letters_total") == {
        (("consumer", "judge"),): 1, (("consumer", "sink"),): 2}


def test_llm_sink_source_and_finished() -> None:
    m = Metrics()
    assert samples(m, "matrix_p2p_tasks_finished_total") == {
        (("status", "done"),): 0, (("status", "failed"),): 0}
    ep = m.llm("http://gpu-1:8000/v1")
    assert m.llm("http://gpu-1:8000/v1") is ep
    ep.request_done(0.8, 200)
    ep.request_done(1.2, "200")
    ep.request_done(30.0, "timeout")
    ep.set_limit(48)
    m.task_finished("done")
    m.sink_rows_written(3)
    m.tasks_submitted(1000)
    e = ("endpoint", "http://gpu-1:8000/v1")
    assert samples(m, "matrix_p2p_llm_requests_total") == {
        (("code", "200"), e): 2, (("code", "timeout"), e): 1}
    assert samples(m, "matrix_p2p_llm_request_seconds_count") == {(e,): 3}
    assert samples(m, "matrix_p2p_llm_endpoint_limit") == {(e,): 48}
    assert samples(m, "matrix_p2p_tasks_finished_total")[(("status", "done"),)] == 1
    assert samples(m, "matrix_p2p_sink_rows_written_total") == {(): 3}
    assert samples(m, "matrix_p2p_source_tasks_submitted_total") == {(): 1000}


def test_two_metrics_in_one_process_do_not_collide() -> None:
    a, b = Metrics(), Metrics()
    a.role("judge").hop_started()
    assert samples(a, "matrix_p2p_tasks_inflight") == {(("role", "judge"),): 1}
    assert samples(b, "matrix_p2p_tasks_inflight") == {}


class Stats(msgspec.Struct):
    pending: int
    ack_pending: int
    redelivered: int
    waiting: int


class Rounds:
    """A fake ``wait`` for the poll loop: each call blocks until the test lets one round run."""

    def __init__(self) -> None:
        self.go: asyncio.Queue[bool] = asyncio.Queue()
        self.waiting = asyncio.Event()

    async def __call__(self, seconds: float, stop: asyncio.Event) -> bool:
        self.waiting.set()
        return await self.go.get()

    async def next(self, stopped: bool = False) -> None:
        self.waiting.clear()
        self.go.put_nowait(stopped)
        if not stopped:
            await self.waiting.wait()


async def test_poll_consumers_refreshes_gauges_and_survives_bus_errors() -> None:
    m = Metrics()
    answers: list[Mapping[str, Stats | None] | Exception] = [
        {"judge": Stats(7, 2, 1, 0), "teacher": None},
        BusError("cannot read consumer judge: timeout"),
        BusError("cannot read consumer judge: timeout"),
        {"judge": Stats(0, 0, 4, 0)},
    ]

    async def read() -> Mapping[str, Stats | None]:
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    rounds, stop = Rounds(), asyncio.Event()
    j = (("role", "judge"),)
    async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
        tg.create_task(m.poll_consumers(read, stop, interval_s=1.0, wait=rounds))
        await rounds.waiting.wait()
        assert samples(m, "matrix_p2p_consumer_pending") == {j: 7}  # teacher: no consumer yet
        assert samples(m, "matrix_p2p_consumer_redelivered") == {j: 1}
        with capture_logs() as logs:
            await rounds.next()
            await rounds.next()
        assert [e["event"] for e in logs] == ["metrics.consumer_poll_failed"]  # once per streak
        assert logs[0]["error"] == "cannot read consumer judge: timeout"
        assert samples(m, "matrix_p2p_consumer_pending") == {j: 7}  # the last values stay
        await rounds.next()
        assert samples(m, "matrix_p2p_consumer_pending") == {j: 0}
        assert samples(m, "matrix_p2p_consumer_redelivered") == {j: 4}
        stop.set()
        await rounds.next(stopped=True)
    assert answers == []


def scrape(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.headers["Content-Type"], resp.read().decode()


async def test_serve_on_a_free_port_and_stop() -> None:
    m = Metrics()
    m.role("judge").hop_started()
    server, port = serve(m.registry, 0)
    try:
        assert port > 0 and server.port == port and server.host == "127.0.0.1"
        assert server.url == f"http://127.0.0.1:{port}/metrics"
        status, ctype, body = await asyncio.to_thread(scrape, server.url)
        assert status == 200 and ctype.startswith("text/plain")
        assert 'matrix_p2p_tasks_inflight{role="judge"} 1.0' in body
        # a busy port is a one-line ConfigError naming the flag
        with pytest.raises(ConfigError, match=rf"--metrics-port: cannot listen on 127.0.0.1:{port}: "):
            serve(m.registry, port)
    finally:
        await asyncio.to_thread(server.close)
    server.close()  # idempotent
    again, port2 = serve(m.registry, port)  # the port is free again (a restart can reuse it)
    again.close()
    assert port2 == port


async def test_null_metrics_has_the_same_calls_and_records_nothing() -> None:
    n = NullMetrics()
    rm = n.role("judge")
    rm.hop_started()
    rm.hop_done(1.0, "no such outcome")  # not even checked: nothing is recorded
    rm.tokens(1, 2)
    n.llm("x").request_done(1.0, 500)
    n.llm("x").set_limit(3)
    n.task_finished("done")
    n.dead_lettered("sink")
    n.sink_rows_written()
    n.tasks_submitted(2)
    n.set_consumer("judge", 1, 2)

    async def read() -> Mapping[str, Stats | None]:
        raise AssertionError("NullMetrics must not poll the broker")

    await n.poll_consumers(read, asyncio.Event())
    assert n.render() == b"" and rm.inflight == 0


def test_cost_benchmark_runs() -> None:
    from bench.metrics_cost import measure

    r = measure(2000)
    assert set(r) >= {"bare_counter_ns", "metrics_ns", "null_metrics_ns", "prometheus_children_ns",
                      "metrics_vs_bare", "metrics_share_of_hop"}
    assert r["metrics_ns"] > 0
