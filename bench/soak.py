"""Soak: N Coral tasks through ``run`` with a fast simulator; RSS of each process over time.

``python -m bench.soak [--tasks 100000] [--plot bench/soak.png] [--json bench/soak.json]``

Not part of the test suite (it runs for many minutes). What it does:

- writes N Coral questions (the bundled 300, cycled, with fresh ids) and a copy
  of the bundled Coral workflow reading them, into a temporary directory;
- starts ``python -m matrix_p2p sim-llm`` (a separate process, so its memory is
  its own) with a big batch, short answers and fast steps, so that the runtime
  and the broker, not the simulated GPU, set the pace;
- starts ``python -m matrix_p2p run`` (its embedded nats-server is a child of
  it) against that simulator, and samples every ``--every`` seconds the RSS and
  CPU time of ``run``, ``nats-server`` and the simulator with psutil, and the
  rows written so far;
- when ``run`` exits, counts the ids in the output: every task exactly once;
- draws RSS over time to ``--plot`` and writes the samples to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
CORAL = ROOT / "workflows" / "coral.yaml"
QUESTIONS = ROOT / "workflows" / "data" / "coral_questions.jsonl"
# answers of 1-8 simulator tokens, a running batch of 4096, steps 20x faster than the default
SIM_ARGS = ["--max-num-seqs", "4096", "--output-tokens-mean", "4", "--slow-factor", "0.05"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_hop(wf: dict[str, Any], concurrency: int) -> dict[str, Any]:
    """The trivial workflow: one role whose agent answers at once (no LLM), one hop per
    task, so that the runtime and the broker, not the agents, are what is measured."""
    return {"name": wf["name"], "version": "1", "source": wf["source"], "sink": wf["sink"],
            "roles": {"echo": {"agent": "matrix_p2p_agents.dummy:Talker", "llm": None,
                               "concurrency": concurrency}},
            "routing": {"type": "cycle", "roles": ["echo"], "max_turns": 1}}


def write_inputs(work: Path, n: int, shape: str = "coral", concurrency: int = 2000) -> Path:
    """N questions and a Coral (or one-hop) workflow over them; returns the workflow file."""
    base = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    with (work / "questions.jsonl").open("w") as f:
        for i in range(n):
            q = dict(base[i % len(base)])
            q["id"] = f"s{i:07d}"
            f.write(json.dumps(q) + "\n")
    wf = yaml.safe_load(CORAL.read_text())
    wf["name"] = "soak"
    wf["source"]["path"] = "questions.jsonl"
    wf["sink"]["path"] = str(work / "out.jsonl")
    if shape == "one-hop":
        wf = one_hop(wf, concurrency)
    path = work / "soak.yaml"
    path.write_text(yaml.safe_dump(wf, sort_keys=False))
    return path


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"simulator exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)  # a start-up poll of a child process, not a test
    raise RuntimeError("simulator did not open its port")


class LineCounter:
    """Rows written so far, reading only what was appended since the last call (a
    300k-row output is hundreds of MB: re-reading it every sample would be the load)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.lines = path, 0, 0

    def __call__(self) -> int:
        if not self.path.exists():
            return self.lines
        with self.path.open("rb") as f:
            f.seek(self.offset)
            for buf in iter(lambda: f.read(1 << 20), b""):
                self.lines += buf.count(b"\n")
                self.offset += len(buf)
        return self.lines


def sample(procs: dict[str, psutil.Process]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, p in procs.items():
        try:
            with p.oneshot():
                cpu = p.cpu_times()
                out[name] = {"rss_mb": round(p.memory_info().rss / 2**20, 1),
                             "cpu_s": round(cpu.user + cpu.system, 1)}
        except psutil.Error:
            pass
    return out


def check_output(out: Path, n: int) -> dict[str, Any]:
    ids: dict[str, int] = {}
    statuses: dict[str, int] = {}
    with out.open() as f:
        for line in f:
            row = json.loads(line)
            ids[row["id"]] = ids.get(row["id"], 0) + 1
            statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    expected = {f"s{i:07d}-t0" for i in range(n)}
    return {"rows": sum(ids.values()), "distinct": len(ids),
            "duplicated": sum(1 for c in ids.values() if c > 1),
            "missing": len(expected - ids.keys()), "unexpected": len(ids.keys() - expected),
            "statuses": statuses}


def growth(samples: list[dict[str, Any]], start: int) -> dict[str, Any]:
    """Each process's RSS at the first sample with ``start`` rows written, its peak after
    that, and the difference (what it grew by in the rest of the run)."""
    later = [s for s in samples if s["rows"] >= start]
    out: dict[str, Any] = {"from_rows": start, "to_rows": later[-1]["rows"] if later else None}
    for name in ("run", "nats-server", "sim-llm"):
        pts = [s["procs"][name]["rss_mb"] for s in later
               if name in s["procs"] and s["procs"][name]["rss_mb"] > 0]
        if pts:
            out[name] = {"at_start_mb": pts[0], "peak_after_mb": max(pts),
                         "growth_mb": round(max(pts) - pts[0], 1)}
    return out


def plot(samples: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name in ("run", "nats-server", "sim-llm"):
        # a process that has exited but is not reaped yet reads as 0: not a sample
        pts = [(s["t"], s["procs"][name]["rss_mb"]) for s in samples
               if name in s["procs"] and s["procs"][name]["rss_mb"] > 0]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"{name} RSS")
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot([s["t"] for s in samples], [s["rows"] for s in samples], "k:", label="rows written")
    ax2.set_ylabel("rows written")
    ax2.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [str(x.get_label()) for x in lines], loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--shape", choices=("coral", "one-hop"), default="coral",
                    help="Coral (three LLM hops a round) or one instant hop per task")
    ap.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    ap.add_argument("--concurrency", type=int, default=2000, help="slots per role")
    ap.add_argument("--plot", default=str(ROOT / "bench" / "soak.png"))
    ap.add_argument("--json", default=str(ROOT / "bench" / "soak.json"))
    ap.add_argument("--timeout", type=float, default=7200.0)
    ap.add_argument("--replot", action="store_true",
                    help="only redraw --plot from the samples in --json (no run)")
    args = ap.parse_args()
    if args.replot:
        saved = json.loads(Path(args.json).read_text())
        plot(saved["samples"], Path(args.plot), f"soak: {saved['tasks']:,} "
             f"{saved.get('shape', 'coral')} tasks through "
             f"`run`, {saved['wall_s']:,.0f} s")
        return 0

    env = dict(os.environ, MX_LOG_JSON="1", MX_LOG_LEVEL="warning",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", ""))
                                          if p))
    with tempfile.TemporaryDirectory(prefix="mx-soak-") as tmp:
        work = Path(tmp)
        wf = write_inputs(work, args.tasks, args.shape, args.concurrency)
        out = work / "out.jsonl"
        port = free_port()
        py = [sys.executable, "-m", "matrix_p2p"]
        sim = subprocess.Popen([*py, "sim-llm", "--port", str(port), *SIM_ARGS], env=env,
                               stdout=subprocess.DEVNULL, stderr=(work / "sim.log").open("wb"),
                               start_new_session=True)
        run: subprocess.Popen[bytes] | None = None
        samples: list[dict[str, Any]] = []
        try:
            wait_port(port, sim)
            t0 = time.monotonic()
            run = subprocess.Popen(
                [*py, "run", str(wf), "--llm-url", f"http://127.0.0.1:{port}", "--out", str(out),
                 "--store", str(work / "store"), "--sync-interval", "--no-progress",
                 "--concurrency", str(args.concurrency)],
                env=env, stdout=subprocess.DEVNULL, stderr=(work / "run.log").open("wb"),
                start_new_session=True)
            run_p, sim_p = psutil.Process(run.pid), psutil.Process(sim.pid)
            count_lines = LineCounter(out)
            while run.poll() is None:
                procs = {"run": run_p, "sim-llm": sim_p}
                for child in run_p.children():
                    if "nats-server" in child.name():
                        procs["nats-server"] = child
                s = {"t": round(time.monotonic() - t0, 1), "rows": count_lines(),
                     "procs": sample(procs)}
                samples.append(s)
                print(json.dumps(s), flush=True)
                if s["t"] > args.timeout:
                    run.terminate()
                time.sleep(args.every)  # the sampling period of a long benchmark
            wall = time.monotonic() - t0
            tail = (work / "run.log").read_text()[-3000:]
            result = check_output(out, args.tasks)
            summary_file = out.with_name(out.name + ".summary.json")
            summary = json.loads(summary_file.read_text()) if summary_file.exists() else None
        finally:
            for p in (run, sim):
                if p is not None and p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
    report = {"tasks": args.tasks, "shape": args.shape, "exit": run.returncode if run else None,
              "wall_s": round(wall, 1), "tasks_per_s": round(args.tasks / wall, 1),
              "sim_args": SIM_ARGS, "concurrency": args.concurrency, "output": result,
              "summary": summary, "rss_growth": growth(samples, min(50_000, args.tasks // 6)),
              "samples": samples,
              "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    plot(samples, Path(args.plot),
         f"soak: {args.tasks:,} {args.shape} tasks through `run`, {wall:,.0f} s")
    ok = (run is not None and run.returncode == 0 and result["distinct"] == args.tasks
          and result["duplicated"] == 0 and result["missing"] == 0)
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=1))
    if not ok:
        print("run log tail:\n" + tail, file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
