"""``python -m bench [--quick] [--json PATH] [--only PART,...]``: every benchmark, one run."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import baselines, fleet, llm_client, matrix_bench, nr, report, routing, runtime, tau
from bench.simfleet import SimFleet

PARTS = ("overhead", "scaling", "saturation", "baselines", "llm_client", "tau", "tau_calls",
         "tau_capacity", "nr", "routing", "matrix")

SIZES = {
    "quick": {"overhead_tasks": 1500, "scaling": [500, 2000, 5000], "scaling_sync": "interval",
              "saturation": [1000, 5000], "sat_warmup": 4.0, "sat_window": 8.0,
              "bl_tasks": 800, "bl_conc": 400, "ray": False,
              "lc_callers": 2000, "lc_warmup": 10.0, "lc_window": 15.0,
              "lc_all_semaphores": False, "tau_tasks": 384, "tau_conc": 256, "tau_call_rounds": 60,
              "tau_sessions": 64, "matrix_tasks": 600},
    "full": {"overhead_tasks": 5000, "scaling": [1000, 10000, 100000], "scaling_sync": "interval",
             "saturation": [1000, 5000, 20000], "sat_warmup": 6.0, "sat_window": 12.0,
             "bl_tasks": 2400, "bl_conc": 800, "ray": True,
             "lc_callers": 2000, "lc_warmup": 10.0, "lc_window": 20.0,
             "lc_all_semaphores": True, "tau_tasks": 768, "tau_conc": 256, "tau_call_rounds": 200,
             "tau_sessions": 256, "matrix_tasks": 3000},
}

NOTES = Path(__file__).with_name("NOTES.md")


def log(msg: str) -> None:
    print(msg, flush=True)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    mode = "quick" if args.quick else "full"
    z = SIZES[mode]
    parts = args.only.split(",") if args.only else list(PARTS)
    r: dict[str, Any] = {"mode": mode, "sizes": z}
    if "overhead" in parts:
        log(f"[overhead] dummy workflow, {z['overhead_tasks']} tasks per run")
        r["overhead"] = await runtime.overhead_suite(z["overhead_tasks"], log)
    if "scaling" in parts:
        log(f"[scaling] runtime 1 process, sync {z['scaling_sync']}, tasks {z['scaling']}")
        r["scaling"] = await runtime.scaling_suite(z["scaling"], log, sync=z["scaling_sync"])
    with tempfile.TemporaryDirectory(prefix="mx-bench-") as tmp:
        work = Path(tmp)
        if "saturation" in parts or "baselines" in parts:
            async with SimFleet(2) as sim:
                cap = (await sim.stats())["capacity_tokens_per_s"]
                r["fleet"] = {"replicas": 2, "capacity_tokens_per_s": cap, "agree_prob": 0.3,
                              "max_turns": fleet.MAX_TURNS}
                if "saturation" in parts:
                    log(f"[saturation] fleet capacity {cap:,.0f} tokens/s; "
                        f"concurrency {z['saturation']}")
                    r["saturation"] = []
                    for c in z["saturation"]:
                        s = await fleet.saturation(sim, work, concurrency=c,
                                                   warmup_s=z["sat_warmup"],
                                                   window_s=z["sat_window"])
                        r["saturation"].append(s)
                        log(f"  {c:>6} tasks: {s['fraction_of_capacity']:.3f} of capacity, "
                            f"{s['mem_bytes_per_inflight_task']:,} B/task "
                            f"(inflight {s['peak_inflight']})")
                if "baselines" in parts:
                    n, c = z["bl_tasks"], z["bl_conc"]
                    log(f"[baselines] {n} tasks, {c} alive at once")
                    bl: dict[str, Any] = {}
                    path = fleet.write_workflow(work, sim.urls, rows=n, concurrency=c,
                                                name="coralbl")
                    for name, coro in [
                        ("ours_1p", lambda: fleet.run_fixed(sim, work, tasks=n, concurrency=c,
                                                            procs=1)),
                        ("batch_asyncio", lambda: baselines.run_batch(sim, path, tasks=n,
                                                                      concurrency=c)),
                        ("central_2w", lambda: baselines.run_central(sim, path, tasks=n,
                                                                     concurrency=c)),
                        ("ours_2p", lambda: fleet.run_fixed(sim, work, tasks=n, concurrency=c,
                                                            procs=2)),
                    ]:
                        bl[name] = await coro()
                        log(f"  {name:14s} {bl[name]['tokens_per_s']:>9,.0f} tok/s "
                            f"({bl[name]['fraction_of_capacity']:.3f} of capacity), "
                            f"{bl[name]['seconds']}s")
                    if z["ray"] and baselines.ray_available():
                        try:
                            bl["ray_data"] = await baselines.run_ray(sim, path, tasks=n,
                                                                     concurrency=c, timeout=600)
                            log(f"  ray_data       {bl['ray_data']['tokens_per_s']:>9,.0f} tok/s")
                        except Exception as exc:  # reported, not fatal: an optional baseline
                            bl["ray_data_error"] = f"{type(exc).__name__}: {exc}"
                            log(f"  ray_data failed: {exc}")
                    else:
                        bl["ray_data_skipped"] = ("quick mode" if not z["ray"]
                                                  else "ray[data] not installed")
                    r["baselines"] = bl
    if "tau" in parts:
        log(f"[tau] tool use: {z['tau_tasks']} tasks, {z['tau_conc']} alive at once, "
            f"sandbox pool {z['tau_conc']}")
        with tempfile.TemporaryDirectory(prefix="mx-bench-tau-") as tmp:
            async with SimFleet(2, max_num_seqs=tau.fleet_slots(z["tau_conc"])) as sim:
                r["tau"] = await tau.run(sim, Path(tmp), tasks=z["tau_tasks"],
                                         concurrency=z["tau_conc"], log=log)
    if "tau_calls" in parts:
        log(f"[tau_calls] one tool call's round trip: sandbox session against a process per call, "
            f"{z['tau_call_rounds']} interleaved rounds")
        r["tau_calls"] = await tau.calls(rounds=z["tau_call_rounds"], log=log)
    if "tau_capacity" in parts:
        log(f"[tau_capacity] {z['tau_sessions']} tau environments at once, each its own sandbox "
            f"and session")
        r["tau_capacity"] = await tau.capacity(sessions=z["tau_sessions"], log=log)
        with tempfile.TemporaryDirectory(prefix="mx-bench-tau-") as tmp:
            async with SimFleet(2) as sim:
                r["tau_capacity"]["trajectories"] = await tau.trajectories(
                    sim, Path(tmp), tasks=z["tau_sessions"], log=log)
    if "llm_client" in parts:
        log(f"[llm_client] {z['lc_callers']} closed-loop callers")
        r["llm_client"] = await llm_client.run_all(callers=z["lc_callers"],
                                                   warmup_s=z["lc_warmup"],
                                                   window_s=z["lc_window"], log=log,
                                                   all_semaphores=z["lc_all_semaphores"])
    if "nr" in parts:
        r["nr"] = await nr.run_all(mode == "quick", log)
    if "routing" in parts:
        log("[routing] published load vs least outstanding, replicas of unequal speed")
        r["routing"] = await routing.compare(window_s=8.0 if mode == "quick" else 15.0, log=log)
    if "matrix" in parts:
        log(f"[matrix] Meta's Matrix dummy Coral vs the same agents on ours: {z['matrix_tasks']} "
            f"tasks, at most 100 alive")
        with tempfile.TemporaryDirectory(prefix="mx-bench-matrix-") as tmp:
            r["matrix"] = await matrix_bench.run(tasks=z["matrix_tasks"], cap=100, work=Path(tmp),
                                                 log=log)
    return r


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes: under 5 minutes")
    p.add_argument("--json", metavar="PATH", help="write the figures and runs as JSON")
    p.add_argument("--only", metavar="PARTS", help=f"comma-separated subset of {PARTS}")
    p.add_argument("--no-results-md", action="store_true", help="do not rewrite RESULTS.md")
    p.add_argument("--report-from", metavar="PATH",
                   help="rebuild RESULTS.md from a --json file of an earlier run (no measuring)")
    args = p.parse_args()
    if args.report_from:
        import json

        r = json.loads(Path(args.report_from).read_text())["runs"]
        notes = NOTES.read_text() if NOTES.exists() else ""
        print(report.write(r, report.figures(r), args.json, notes))
        return
    from matrix_p2p import logs

    logs.setup("warning")
    t0 = time.time()
    try:
        import uvloop

        r = uvloop.run(main(args))
    except ImportError:
        r = asyncio.run(main(args))
    r.update(command="python -m bench " + " ".join(sys.argv[1:]), host=platform.node(),
             cpus=os.cpu_count(), started=time.strftime("%Y-%m-%d %H:%M", time.localtime(t0)),
             elapsed_s=time.time() - t0)
    f = report.figures(r)
    notes = NOTES.read_text() if NOTES.exists() else ""
    if args.no_results_md:
        text = report.table(f)
        if args.json:
            import json

            Path(args.json).write_text(json.dumps({"figures": f, "runs": r}, indent=1))
    else:
        text = report.write(r, f, args.json, notes)
    print(text)
    print(f"elapsed {r['elapsed_s']:.0f}s")


cli()
