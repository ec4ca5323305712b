"""The figures, the table, ``bench/RESULTS.md``, the PNG plots and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

TARGETS = {"overhead_ratio": 0.5, "fleet_utilization": 0.95, "speedup_vs_batch": 2.0,
           "speedup_vs_central": 2.0, "llm_client_fraction_of_capacity": 0.95,
           "tau_fleet_busy": 0.85, "tau_alive": 256, "vs_matrix_steps_per_s": 10.0,
           "vs_matrix_cpu_per_task": 20.0}


def figures(r: dict[str, Any]) -> dict[str, Any]:
    f: dict[str, Any] = {}
    ov = r.get("overhead", {})
    if ov:
        # Headline under sync: interval, where a hop is CPU-bound: the runtime's own
        # cost shows. Under sync: always every PubAck waits for an fsync, the disk
        # (shared here) sets the pace and run-to-run noise exceeds the difference.
        relay, rt = ov["relay_1p_interval"], ov["runtime_1p_interval"]
        ra, rta = ov["relay_1p_always"], ov["runtime_1p_always"]
        f["broker_relay_hops_per_s"] = relay["hops_per_s"]
        f["runtime_hops_per_s"] = rt["hops_per_s"]
        f["overhead_ratio"] = round(rt["hops_per_s"] / relay["hops_per_s"], 3)
        f["broker_relay_hops_per_s_sync_always"] = ra["hops_per_s"]
        f["runtime_hops_per_s_sync_always"] = rta["hops_per_s"]
        f["overhead_ratio_sync_always"] = round(rta["hops_per_s"] / ra["hops_per_s"], 3)
        f["overhead_ratio_inproc_sync_always"] = round(
            ov["runtime_inproc_always"]["hops_per_s"] / ov["relay_inproc_always"]["hops_per_s"], 3)
        f["overhead_ratio_2p_sync_always"] = round(ov["runtime_2p_always"]["hops_per_s"]
                                                   / ov["relay_2p_always"]["hops_per_s"], 3)
        f["runtime_hops_per_s_2p_sync_always"] = ov["runtime_2p_always"]["hops_per_s"]
        f["sync_always_cost_relay"] = round(1 - ra["hops_per_s"] / relay["hops_per_s"], 3)
        f["sync_always_cost_runtime"] = round(1 - rta["hops_per_s"] / rt["hops_per_s"], 3)
        if "worker_cpu_us_per_hop" in rt:  # issue 19: the worker's CPU per hop, and before it
            f["worker_cpu_us_per_hop"] = rt["worker_cpu_us_per_hop"]
            f["relay_cpu_us_per_hop"] = relay["worker_cpu_us_per_hop"]
            old = ov.get("runtime_legacy_1p_interval")
            if old is not None:
                f["worker_cpu_us_per_hop_legacy_path"] = old["worker_cpu_us_per_hop"]
    sat = r.get("saturation", [])
    if sat:
        top = max(sat, key=lambda s: s["concurrency"])
        f["fleet_utilization"] = top["fraction_of_capacity"]
        f["fleet_utilization_concurrency"] = top["concurrency"]
        f["mem_bytes_per_inflight_task"] = top["mem_bytes_per_inflight_task"]
        for s in sat:
            f[f"fleet_utilization_at_{s['concurrency']}"] = s["fraction_of_capacity"]
    bl = r.get("baselines", {})
    if bl:
        ours = bl["ours_1p"]["tokens_per_s"]
        f["speedup_vs_batch"] = round(ours / bl["batch_asyncio"]["tokens_per_s"], 3)
        if "ray_data" in bl:
            f["speedup_vs_ray_data"] = round(ours / bl["ray_data"]["tokens_per_s"], 3)
        f["speedup_vs_central"] = round(ours / bl["central_2w"]["tokens_per_s"], 3)
        if "ours_2p" in bl:
            f["tokens_per_s_scaling_2p_over_1p"] = round(bl["ours_2p"]["tokens_per_s"] / ours, 3)
    if ov:
        f["hops_per_s_scaling_2p_over_1p"] = round(ov["runtime_2p_always"]["hops_per_s"]
                                                   / ov["runtime_1p_always"]["hops_per_s"], 3)
    lc = r.get("llm_client", {})
    if lc:
        f["llm_client_fraction_of_capacity"] = lc["llm_client"]["fraction_of_capacity"]
        f["llm_client_rejected_fraction"] = lc["llm_client"]["rejected_fraction"]
        f["fixed_semaphore_fraction_of_capacity"] = lc["fixed_semaphore"]["fraction_of_capacity"]
        f["fixed_semaphore_rejected_fraction"] = lc["fixed_semaphore"]["rejected_fraction"]
        f["client_per_request_fraction_of_capacity"] = (
            lc["client_per_request"]["fraction_of_capacity"])
        f["client_per_request_rejected_fraction"] = lc["client_per_request"]["rejected_fraction"]
    tc = r.get("tau_calls", {})
    if tc:
        f["tau_session_call_p50_ms"] = tc["session_read"]["p50_ms"]
        f["tau_session_write_call_p50_ms"] = tc["session_write"]["p50_ms"]
        f["tau_execute_call_p50_ms"] = tc["execute_read"]["p50_ms"]
        f["tau_execute_true_p50_ms"] = tc["execute_true"]["p50_ms"]
    ta = r.get("tau", {})
    if ta:
        w = ta["ours"].get("steady_window") or {}
        call = ta["ours"].get("tool_calls", {}).get("call") or {}
        if call:
            f["tau_tool_call_p50_ms"] = call["p50_ms"]
        if w:
            f["tau_fleet_busy"] = w["fleet_busy"]
            f["tau_alive"] = w["alive_median"]
        f["tau_vs_step_barrier"] = ta["ratio_tokens_per_s"]
    mx = r.get("matrix", {})
    if mx.get("ratios"):
        f["vs_matrix_steps_per_s"] = mx["ratios"]["steps_per_s"]
        f["vs_matrix_cpu_per_task"] = mx["ratios"]["cpu_per_task"]
    cap = r.get("tau_capacity", {})
    if cap:
        f["tau_sessions_alive_at_once"] = cap["live_sessions"]
        f["tau_session_pss_mb"] = cap["pss_mb_per_session"]
        if "trajectories" in cap:
            f["tau_trajectories_done_at_once"] = cap["trajectories"]["done"]
    return f


def table(f: dict[str, Any]) -> str:
    lines = ["| figure | value | target |", "|---|---:|---:|"]
    for k, v in f.items():
        t = TARGETS.get(k)
        mark = ""
        if t is not None and isinstance(v, int | float):
            mark = f">= {t} {'(met)' if v >= t else '(MISSED)'}"
        if k == "llm_client_rejected_fraction":
            mark = f"< 0.01 {'(met)' if v < 0.01 else '(MISSED)'}"
        if k == "tau_session_call_p50_ms":
            mark = f"<= 3 {'(met)' if v <= 3 else '(MISSED)'}"
        val = f"{v:,.3f}" if isinstance(v, float) else f"{v:,}"
        lines.append(f"| `{k}` | {val} | {mark} |")
    return "\n".join(lines)


def plots(r: dict[str, Any], outdir: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    ov = r.get("overhead", {})
    if ov:
        fig, ax = plt.subplots(figsize=(8, 4))
        keys = list(ov)
        ax.bar(range(len(keys)), [ov[k]["hops_per_s"] for k in keys],
               color=["tab:gray" if k.startswith("relay") else "tab:blue" for k in keys])
        ax.set_xticks(range(len(keys)), [k.replace("_", "\n", 1) for k in keys], fontsize=7)
        ax.set_ylabel("hops/s")
        ax.set_title("Raw relay (gray) vs matrix_p2p worker (blue)")
        fig.tight_layout()
        fig.savefig(outdir / "hops.png")
        made.append("hops.png")
        plt.close(fig)
    sat = r.get("saturation", [])
    if sat:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [s["concurrency"] for s in sat]
        ax.plot(xs, [s["fraction_of_capacity"] for s in sat], "o-")
        ax.axhline(0.95, ls="--", color="gray")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("concurrent tasks")
        ax.set_ylabel("generated tokens/s / capacity")
        ax.set_title("Fleet utilization (1 worker process)")
        fig.tight_layout()
        fig.savefig(outdir / "fleet.png")
        made.append("fleet.png")
        plt.close(fig)
    bl = r.get("baselines", {})
    if bl:
        fig, ax = plt.subplots(figsize=(7, 4))
        keys = [k for k in bl if isinstance(bl[k], dict) and "tokens_per_s" in bl[k]]
        ax.bar(keys, [bl[k]["tokens_per_s"] for k in keys])
        ax.set_ylabel("generated tokens/s")
        ax.set_title("Same fleet, same workload")
        plt.setp(ax.get_xticklabels(), fontsize=8)
        fig.tight_layout()
        fig.savefig(outdir / "baselines.png")
        made.append("baselines.png")
        plt.close(fig)
    lc = r.get("llm_client", {})
    if lc:
        fig, ax = plt.subplots(figsize=(7, 4))
        keys = [k for k in lc if k not in ("fleet", "fixed_semaphore")]
        ax.bar(keys, [lc[k]["fraction_of_capacity"] for k in keys], label="fraction of capacity")
        ax.bar(keys, [lc[k]["rejected_fraction"] for k in keys], alpha=0.6,
               label="rejected fraction")
        ax.legend()
        plt.setp(ax.get_xticklabels(), fontsize=7, rotation=15)
        ax.set_title("LLM clients on the same fleet")
        fig.tight_layout()
        fig.savefig(outdir / "llm_client.png")
        made.append("llm_client.png")
        plt.close(fig)
    sc = r.get("scaling", {})
    if sc:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [int(k) for k in sc]
        ax.plot(xs, [sc[k]["hops_per_s"] for k in sc], "o-")
        ax.set_xscale("log")
        ax.set_xlabel("tasks")
        ax.set_ylabel("hops/s (runtime, 1 process)")
        fig.tight_layout()
        fig.savefig(outdir / "scaling.png")
        made.append("scaling.png")
        plt.close(fig)
    return made


def write(r: dict[str, Any], f: dict[str, Any], json_path: str | None, notes: str) -> str:
    made = plots(r, HERE)
    doc = [
        "# matrix_p2p benchmarks",
        "",
        f"Produced by `{r['command']}` on {r['host']} ({r['cpus']} cores, shared), "
        f"{r['started']}, in {r['elapsed_s']:.0f} s. Mode: {r['mode']}.",
        "",
        "## Headline figures",
        "",
        table(f),
        "",
        notes,
        "",
        "## Plots",
        "",
        *([f"![{m}]({m})" for m in made] or ["(matplotlib not installed: no plots)"]),
        "",
        "## Raw measurements",
        "",
        "```json",
        json.dumps({k: v for k, v in r.items() if k not in ("command",)}, indent=1),
        "```",
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(doc))
    if json_path:
        Path(json_path).write_text(json.dumps({"figures": f, "runs": r}, indent=1))
    return table(f)
