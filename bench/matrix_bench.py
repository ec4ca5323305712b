"""Meta's Matrix (fair-matrix 0.2.6 on Ray) against our runtime, same machine, same tasks,
same cap on tasks alive: ``python -m bench --only matrix``.

- ``matrix``: Matrix's own dummy Coral (``python -m matrix.agents.p2p_agents
  --config-name=coral_mmlu_pro_dummy``: ``ts_interaction_dummy``'s agents, no LLM),
  its dataset swapped for a local JSON lines file of MMLU-Pro-shaped rows (no network).
- ``ours``: the same agents ported one to one (``bench.matrix_agents``) through
  ``python -m matrix_p2p run`` (embedded nats-server, the product's default
  ``sync: always``), ``limits.max_inflight`` = the same cap.

Each side runs as its own process tree (a new session); every 0.5 s a sampler walks
the tree (the command, Ray's GCS, raylet, dashboard and workers; our ``run`` and its
nats-server) and records each process's CPU seconds and proportional set size.
Reported per side: steps/s (agent steps in the output rows over the processing window,
first task start to last task end), CPU per task (the whole tree's CPU seconds over the
whole command, start-up included, and over the processing window only), the average
number of tasks alive (the tasks' [start, end] intervals integrated over the window),
peak memory (the tree's summed PSS at its highest sample). The ratios are ours over
Matrix for steps/s and Matrix over ours for CPU per task: higher is better for both.
Matrix's rows are checked before they are counted: a run whose dialogues are empty
(Matrix 0.2.6 with Ray 2.60 writes them so and exits 0) fails loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import itertools
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MATRIX_VERSION = "0.2.6"
EXTRA = "matrix-bench"
MAX_TURNS = 20  # Matrix's coral_sequential orchestrator
OPTIONS = [f"option {c}" for c in "ABCDEFGHIJ"]
STARTUP_TIMEOUT = "The current node timed out during startup"
RAY_CPUS = {"teacher": 0.25, "student": 0.25, "answer_extractor": 0.25, "answer_matcher": 0.25,
            "_sink": 0.5}


class MatrixRunError(RuntimeError):
    """Matrix ran but its output cannot be counted (empty dialogues, missing rows)."""


def unavailable() -> str | None:
    """Why Matrix cannot run here, or None."""
    try:
        version = importlib.metadata.version("fair-matrix")
    except importlib.metadata.PackageNotFoundError:
        return f"fair-matrix is not installed (pip install -e '.[{EXTRA}]')"
    if version != MATRIX_VERSION:
        return f"fair-matrix {version} is installed, the benchmark pins {MATRIX_VERSION}"
    for mod in ("ray", "hydra", "matrix.agents.p2p_agents"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} cannot be imported (pip install -e '.[{EXTRA}]')"
    return None


def write_rows(path: Path, n: int) -> None:
    """MMLU-Pro-shaped questions (``question_id``, ``question``, ``options``, ``answer``);
    our port reads the same rows with ``choices`` as Matrix's loader builds them."""
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"question_id": f"q{i}", "question": f"Question {i}: which option?",
                                "options": OPTIONS, "answer": "ABCDEFGHIJ"[i % 10],
                                "choices": {chr(65 + k): o for k, o in enumerate(OPTIONS)}})
                    + "\n")


def write_workflow(work: Path, rows: Path, cap: int) -> Path:
    """Matrix's interaction order, one role per position: teacher, extractor, matcher,
    student, extractor, matcher; ended by the matcher (``state.done``)."""
    agents = "bench.matrix_agents"
    gen = {"generation_length": 1024, "length_delta": 0.2}
    match = {"expected_turns": 3, "max_turns": MAX_TURNS}
    roles = {
        "teacher": {"agent": f"{agents}:DummyCoralAgent", "options": gen},
        "answer_extractor_t": {"agent": f"{agents}:DummyCoralExtractionAgent"},
        "answer_matcher_t": {"agent": f"{agents}:DummyCoralMatchAgent", "options": match},
        "student": {"agent": f"{agents}:DummyCoralAgent", "options": gen},
        "answer_extractor_s": {"agent": f"{agents}:DummyCoralExtractionAgent"},
        "answer_matcher_s": {"agent": f"{agents}:DummyCoralMatchAgent", "options": match},
    }
    for r in roles.values():
        r |= {"llm": None, "concurrency": cap}
    wf = {"name": "matrixcoral", "version": "1",
          "description": "Matrix's dummy Coral, ported one to one (bench/matrix_agents.py).",
          "source": {"path": str(rows), "id_field": "question_id"},
          "sink": {"path": str(work / "ours.jsonl")},
          "roles": roles,
          "routing": {"type": "cycle", "roles": list(roles), "stop_when": "done",
                      "max_turns": 6 * MAX_TURNS + 6},
          "limits": {"max_inflight": cap, "max_hops": 6 * MAX_TURNS + 12}}
    path = work / "matrixcoral.yaml"
    path.write_text(yaml.safe_dump(wf, sort_keys=False))
    return path


# ------------------------------------------------------------------ process trees
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def _sid(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[3])
    return None


def tree(root: int) -> set[int]:
    """``root``, its descendants, and every process of its session (Ray's daemons
    re-parented to init stay in the session the command was started in)."""
    kids = _children()
    out, todo = set(), [root]
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo += kids.get(p, [])
    for pids in kids.values():
        for p in pids:
            if p not in out and _sid(p) == root:
                out.add(p)
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        f = stat[stat.rindex(")") + 2:].split()
        return (int(f[11]) + int(f[12])) / _TICK  # utime + stime
    return None


def _pss(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        for ln in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if ln.startswith("Pss:"):
                return int(ln.split()[1]) * 1024
    return 0


class TreeMonitor:
    """Samples a process tree: cumulative CPU (each process's last value, kept after it
    exits) and summed PSS, with the time of each sample."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.cpu: dict[int, float] = {}
        self.samples: list[tuple[float, float, int, int]] = []  # t, cpu, pss, processes

    def sample(self) -> None:
        pids = tree(self.root)
        pss = 0
        for p in pids:
            c = _cpu(p)
            if c is not None:
                self.cpu[p] = max(c, self.cpu.get(p, 0.0))
                pss += _pss(p)
        self.samples.append((time.time(), sum(self.cpu.values()), pss, len(pids)))

    def cpu_at(self, t: float) -> float:
        """Cumulative CPU at ``t``, linear between the samples around it."""
        s = self.samples
        if not s:
            return 0.0
        if t <= s[0][0]:
            return s[0][1]
        for a, b in itertools.pairwise(s):
            if a[0] <= t <= b[0]:
                return a[1] + (b[1] - a[1]) * (t - a[0]) / max(b[0] - a[0], 1e-9)
        return s[-1][1]


async def run_tree(argv: list[str], *, cwd: Path, env: dict[str, str], log_path: Path,
                   timeout: float) -> tuple[int, float, TreeMonitor]:
    """Run ``argv`` in a new session, sampling its tree every 0.5 s; at the end (or the
    timeout) every process left in the session is stopped (SIGTERM, then SIGKILL)."""
    t0 = time.time()
    with log_path.open("wb") as logf:
        proc = await asyncio.create_subprocess_exec(*argv, cwd=cwd, env=env, stdout=logf,
                                                    stderr=asyncio.subprocess.STDOUT,
                                                    start_new_session=True)
        mon = TreeMonitor(proc.pid)
        try:
            while proc.returncode is None:
                mon.sample()
                if time.time() - t0 > timeout:
                    raise TimeoutError(f"{argv[2]} ran past {timeout:.0f} s (log: {log_path})")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.5)
            rc = proc.returncode
            wall = time.time() - t0
            mon.sample()  # what the session left running (Ray's daemons) until stopped
        finally:
            await _stop_session(proc)
    return rc, wall, mon


def _session(sid: int) -> set[int]:
    return {int(e) for e in os.listdir("/proc") if e.isdigit() and _sid(int(e)) == sid}


async def _stop_session(proc: asyncio.subprocess.Process) -> None:
    """Stop what is left of the command's session, by its processes' ids (only what the
    command started: the session is its own)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = (tree(proc.pid) | _session(proc.pid)) if proc.returncode is None \
            else _session(proc.pid) - {proc.pid}
        if not left:
            break
        for p in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, sig)
        for _ in range(50):
            if not any(_cpu(p) is not None for p in left):
                break
            await asyncio.sleep(0.2)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), 5)


# ------------------------------------------------------------------ the rows
def matrix_rows(path: Path) -> list[tuple[float, float, int]]:
    """(start, end, agent steps) of each of Matrix's rows; raises ``MatrixRunError`` when
    a row has no dialogue (the injected question aside) or an empty teacher/student turn."""
    if not path.exists():
        raise MatrixRunError(f"Matrix wrote no output file ({path})")
    out: list[tuple[float, float, int]] = []
    empty = 0
    for line in path.read_text().splitlines():
        row = json.loads(line)
        hist = row.get("history") or []
        steps = hist[1:]  # the first is the injected question (get_task_message)
        texts = [h["response"].get("text") for h in steps if h.get("agent") in ("teacher", "student")]
        if not steps or not texts or not all(texts):
            empty += 1
            continue
        start = row.get("init_timestamp") or row.get("creation_timestamp")
        out.append((float(start), float(row["finish_timestamp"]), len(steps)))
    if empty:
        raise MatrixRunError(f"{empty} of Matrix's rows have an empty dialogue ({path}): "
                             f"not counted (a Ray version fair-matrix {MATRIX_VERSION} "
                             f"does not work with?)")
    return out


def our_rows(path: Path) -> list[tuple[float, float, int]]:
    out = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["status"] != "done" or not row["dialogue"]:
            raise RuntimeError(f"our row {row['id']} is {row['status']} or empty: {row['error']}")
        t = row["timings"]
        out.append((float(t["created_at"]), float(t["finished_at"]), len(row["dialogue"])))
    return out


def side(name: str, rows: list[tuple[float, float, int]], tasks: int, rc: int, wall: float,
         mon: TreeMonitor) -> dict[str, Any]:
    if len(rows) != tasks:
        raise RuntimeError(f"{name}: {len(rows)} rows for {tasks} tasks")
    start, end = min(r[0] for r in rows), max(r[1] for r in rows)
    window = max(end - start, 1e-9)
    steps = sum(r[2] for r in rows)
    alive = sum(min(e, end) - max(s, start) for s, e, _ in rows) / window
    cpu_total = mon.samples[-1][1] if mon.samples else 0.0
    cpu_window = mon.cpu_at(end) - mon.cpu_at(start)
    return {"name": name, "tasks": tasks, "rc": rc, "wall_s": round(wall, 1),
            "window_s": round(window, 2), "steps": steps,
            "steps_per_task": round(steps / tasks, 2),
            "steps_per_s": round(steps / window, 1),
            "alive_mean": round(alive, 1),
            "cpu_s": round(cpu_total, 2), "cpu_s_window": round(cpu_window, 2),
            "cpu_ms_per_task": round(1000 * cpu_total / tasks, 2),
            "cpu_ms_per_task_window": round(1000 * cpu_window / tasks, 2),
            "cores_in_window": round(cpu_window / window, 2),
            "peak_pss_mb": round(max((s[2] for s in mon.samples), default=0) / 2**20, 1),
            "peak_processes": max((s[3] for s in mon.samples), default=0)}


async def run(*, tasks: int, cap: int, work: Path, log: Any, timeout: float = 1200) -> dict[str, Any]:
    out: dict[str, Any] = {"tasks": tasks, "cap": cap}
    why = unavailable()
    if why is not None:
        log(f"  skipped: {why}")
        return out | {"skipped": why}
    out["versions"] = {p: importlib.metadata.version(p) for p in ("fair-matrix", "ray")}
    rows = work / "questions.jsonl"
    write_rows(rows, tasks)
    env = dict(os.environ)
    # a local Ray started by the command (Matrix's own cluster files are not used)
    env |= {"RAY_ADDRESS": "local", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
            "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}

    mout = work / "matrix.jsonl"
    argv = [sys.executable, "-m", "matrix.agents.p2p_agents",
            "--config-name=coral_mmlu_pro_dummy", f"max_concurrent_tasks={cap}",
            "dataset.name=json", f"dataset.data_files={rows}", "dataset.split=train",
            f"dataset.cut_off={tasks}", f"output.path={mout}",
            f"hydra.run.dir={work / 'hydra'}",
            # the config asks 6.5 CPUs of Ray's resources: on a smaller machine its actors
            # would never be placed. Resource requests only: every actor is a process anyway
            *(f"agents.{a}.ray_resources.num_cpus={c}" for a, c in RAY_CPUS.items())]
    for attempt in range(3):
        rc, wall, mon = await run_tree(argv, cwd=work, env=env, log_path=work / "matrix.log",
                                       timeout=timeout)
        # Ray waits a fixed 30 s for its raylet: on a loaded machine its start can miss
        # that; such a start is tried again (and counted as such), a failed run is not
        if rc == 0 or STARTUP_TIMEOUT not in (work / "matrix.log").read_text(errors="replace"):
            break
        log(f"  Matrix: Ray's start-up timed out (try {attempt + 1} of 3)")
        out["ray_startup_timeouts"] = attempt + 1
    if rc != 0:
        tail = (work / "matrix.log").read_text(errors="replace")[-1500:]
        raise MatrixRunError(f"Matrix exited {rc}:\n{tail}")
    out["matrix"] = side("matrix", matrix_rows(mout), tasks, rc, wall, mon)
    _log_side(log, out["matrix"])

    wf = write_workflow(work, rows, cap)
    argv = [sys.executable, "-m", "matrix_p2p", "run", str(wf), "--limit", str(tasks),
            "--out", str(work / "ours.jsonl"), "--store", str(work / "nats"), "--no-progress"]
    rc, wall, mon = await run_tree(argv, cwd=ROOT, env=env, log_path=work / "ours.log",
                                   timeout=timeout)
    if rc != 0:
        tail = (work / "ours.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"our run exited {rc}:\n{tail}")
    out["ours"] = side("ours", our_rows(work / "ours.jsonl"), tasks, rc, wall, mon)
    _log_side(log, out["ours"])

    m, o = out["matrix"], out["ours"]
    out["ratios"] = {
        "steps_per_s": round(o["steps_per_s"] / m["steps_per_s"], 2),
        "cpu_per_task": round(m["cpu_ms_per_task"] / o["cpu_ms_per_task"], 2),
        "cpu_per_task_window": round(m["cpu_ms_per_task_window"]
                                     / max(o["cpu_ms_per_task_window"], 1e-9), 2),
        "peak_pss": round(m["peak_pss_mb"] / max(o["peak_pss_mb"], 1e-9), 2),
    }
    r = out["ratios"]
    log(f"  ours / Matrix: {r['steps_per_s']}x steps/s, {r['cpu_per_task']}x less CPU per task "
        f"({r['cpu_per_task_window']}x in the processing window), {r['peak_pss']}x less memory")
    return out


def _log_side(log: Any, s: dict[str, Any]) -> None:
    log(f"  {s['name']:7s} {s['steps_per_s']:>8,.1f} steps/s ({s['steps']} steps, "
        f"{s['steps_per_task']}/task, window {s['window_s']} s, wall {s['wall_s']} s); "
        f"CPU {s['cpu_ms_per_task']} ms/task ({s['cpu_ms_per_task_window']} in the window, "
        f"{s['cores_in_window']} cores); alive {s['alive_mean']}; peak PSS "
        f"{s['peak_pss_mb']:,.0f} MiB ({s['peak_processes']} processes)")
