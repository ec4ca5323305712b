"""What recording one hop costs: ``python -m bench.metrics_cost [N]``, and what it does to the
real worker's hop rate: ``python -m bench.metrics_cost --hops [TASKS] [REPEATS]``.

One hop's metrics are ``hop_started()`` plus ``hop_done(seconds, outcome)``
(in-flight up and down, the outcome counter, the latency histogram). Timed
against: a bare counter increment (``stats.hops += 1``, what the worker does
today), ``NullMetrics`` (metrics off), and the same four updates through
prometheus_client's pre-bound children (the obvious implementation we did
not keep). Each figure is the best of several repeats, in ns per hop, on the
CPU this runs on; the share of a hop uses DESIGN.md's ~55 µs of client CPU
per JetStream hop.

Measured on the 2 shared cores of the development machine (8 runs): this
package 160-380 ns per hop (0.3-0.7% of a hop), NullMetrics 25-80 ns, a
bare increment 15-40 ns, prometheus_client's children 2.0-4.5 µs.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from matrix_p2p.metrics import HOP_BUCKETS, Metrics, NullMetrics

HOP_CPU_NS = 55_000  # DESIGN.md: about 55 µs of client CPU per JetStream hop


def _best_ns(body: Callable[[int], None], n: int, repeats: int = 7) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        body(n)
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


class _Stats:
    __slots__ = ("hops",)

    def __init__(self) -> None:
        self.hops = 0


def measure(n: int = 200_000) -> dict[str, float]:
    """ns per hop for each way of recording it, the loop's own cost subtracted."""
    seconds = [0.0003 * (i % 5000) for i in range(1000)]  # spread over the buckets
    outcomes = ["forwarded"] * 5 + ["done"]

    def empty(k: int) -> None:
        for i in range(k):
            s = seconds[i % 1000]  # noqa: F841 -- the same loads as the other bodies
            o = outcomes[i % 6]  # noqa: F841

    stats = _Stats()

    def bare(k: int) -> None:
        for i in range(k):
            s = seconds[i % 1000]  # noqa: F841
            o = outcomes[i % 6]  # noqa: F841
            stats.hops += 1

    def recorder(rm: object) -> Callable[[int], None]:
        started, done = rm.hop_started, rm.hop_done  # type: ignore[attr-defined]

        def body(k: int) -> None:
            for i in range(k):
                s = seconds[i % 1000]
                o = outcomes[i % 6]
                started()
                done(s, o)
        return body

    reg = CollectorRegistry()
    hops = Counter("h", "h", ["role", "outcome"], registry=reg)
    by_outcome = {o: hops.labels("judge", o) for o in set(outcomes)}
    hist = Histogram("s", "s", ["role"], buckets=HOP_BUCKETS, registry=reg).labels("judge")
    gauge = Gauge("g", "g", ["role"], registry=reg).labels("judge")

    def children(k: int) -> None:
        for i in range(k):
            s = seconds[i % 1000]
            o = outcomes[i % 6]
            gauge.inc()
            gauge.dec()
            by_outcome[o].inc()
            hist.observe(s)

    loop = _best_ns(empty, n)
    out = {
        "bare_counter_ns": _best_ns(bare, n) - loop,
        "metrics_ns": _best_ns(recorder(Metrics().role("judge")), n) - loop,
        "null_metrics_ns": _best_ns(recorder(NullMetrics().role("judge")), n) - loop,
        "prometheus_children_ns": _best_ns(children, n) - loop,
    }
    out["metrics_vs_bare"] = out["metrics_ns"] / max(out["bare_counter_ns"], 1.0)
    out["metrics_share_of_hop"] = out["metrics_ns"] / HOP_CPU_NS
    return out


async def hop_rates(n_tasks: int, repeats: int, procs: int = 1,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """The real worker's hop rate with metrics off and on, side by side: runs alternate
    (off, on, off, on, ...) on fresh brokers, so drift on a shared machine hits both."""
    from bench.runtime import hop_run

    rates: dict[str, list[float]] = {"off": [], "on": []}
    for i in range(repeats):
        for label in ("off", "on") if i % 2 == 0 else ("on", "off"):
            r = await hop_run("runtime", procs, n_tasks, sync="interval", metrics=label == "on")
            rates[label].append(r["hops_per_s"])
            log(f"  metrics {label:3s} {r['hops_per_s']:>9,.0f} hops/s ({r['hops']} hops, "
                f"worker cpu {r['worker_cpu_s']}s)")
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    return {"tasks": n_tasks, "procs": procs, "repeats": repeats, "off": rates["off"],
            "on": rates["on"], "median_off": off, "median_on": on, "ratio_on_off": round(on / off, 3)}


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--hops":
        n_tasks = int(argv[1]) if len(argv) > 1 else 3000
        repeats = int(argv[2]) if len(argv) > 2 else 4
        h = asyncio.run(hop_rates(n_tasks, repeats))
        print(f"median hops/s: metrics off {h['median_off']:,.0f}, on {h['median_on']:,.0f}: "
              f"on/off = {h['ratio_on_off']:.3f} ({repeats} runs each, {n_tasks} tasks per run)")
        return
    n = int(argv[0]) if argv else 200_000
    r = measure(n)
    print(f"bare counter increment      {r['bare_counter_ns']:7.0f} ns/hop")
    print(f"NullMetrics (metrics off)   {r['null_metrics_ns']:7.0f} ns/hop")
    print(f"Metrics (this package)      {r['metrics_ns']:7.0f} ns/hop  "
          f"= {r['metrics_vs_bare']:.1f}x a bare increment, "
          f"{100 * r['metrics_share_of_hop']:.2f}% of a {HOP_CPU_NS / 1000:.0f} µs hop")
    print(f"prometheus_client children  {r['prometheus_children_ns']:7.0f} ns/hop")


if __name__ == "__main__":
    main(sys.argv[1:])
