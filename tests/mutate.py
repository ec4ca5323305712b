"""Break the guards of the exactly-once promise one at a time; show which test catches each.

    python -m tests.mutate            # all mutants (make mutate)
    python -m tests.mutate sink-dedup retry-count   # some of them
    python -m tests.mutate --list

Each mutant is a small textual change to one product file (ack before publish,
drop the msg-id, skip the sink's dedup, ...). The tree (tracked and untracked,
not ignored files) is copied once to a temporary directory; each mutant is
applied to the copy, the tests named for it run there with ``-x`` and a short
per-test timeout, and the file is restored. The table says, per guard, which
test failed first and how long the run took, or MISSED. A mutant whose text is
no longer in the file (the code moved on) is reported as STALE: update it.
First the same tests run on the unmutated copy (the baseline must pass).
Not part of CI: this is how the tests are kept honest.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
G = "tests/integration/test_guards.py::"
HOP = "tests/integration/test_hop_faults.py"
EDGE = "tests/integration/test_edge_faults.py"
LIVE = "tests/integration/test_liveness.py::"


@dataclass
class Mutant:
    name: str
    path: str
    edits: list[tuple[str, str]]  # (old, new); whitespace in ``old`` matches any whitespace
    tests: list[str] = field(default_factory=list)


MUTANTS = [
    Mutant("publish-then-ack: ack before publish", "matrix_p2p/runtime/worker.py", [
        ("try:\n for child in children:",
         "await d.ack()  # MUTANT\n        try:\n            for child in children:"),
        ("# and the msg-id dedups the republish\n await d.ack()", "# MUTANT: acked above"),
    ], [G + "test_guard_publish_then_ack", HOP]),
    Mutant("msg-id dedup: worker drops the msg-id", "matrix_p2p/runtime/worker.py", [
        ("await self.bus.publish(p.subject, p.data, msg_id=p.msg_id)",
         "await self.bus.publish(p.subject, p.data, msg_id=None)"),
    ], [G + "test_guard_msg_id_dedup", HOP]),
    Mutant("msg-id dedup: source drops the msg-id", "matrix_p2p/runtime/source.py", [
        ("msg_id=hop_msg_id(tid, 0)", "msg_id=None"),
    ], [G + "test_guard_msg_id_dedup_at_the_source", EDGE]),
    Mutant("sink dedup: skipped", "matrix_p2p/runtime/sink.py", [
        ('if verdict in ("duplicate", "stale"):', "if False:"),
    ], [G + "test_guard_sink_dedup", EDGE]),
    Mutant("dead-letter on the sink: garbage termed, not kept", "matrix_p2p/runtime/sink.py", [
        ("await topology.dead_letter(self.bus, self.names, d.data, reason=str(exc), subject=d.subject)",
         "pass"),
    ], [G + "test_guard_dead_letter_on_sink", EDGE]),
    Mutant("dead-letter on the worker: garbage termed, not kept", "matrix_p2p/runtime/worker.py", [
        ("await topology.dead_letter(self.bus, self.names, d.data, reason=action.reason, "
         "subject=d.subject, task_id=action.task_id)", "pass"),
    ], [G + "test_guard_dead_letter_on_worker"]),
    Mutant("finished envelopes accepted", "matrix_p2p/runtime/hop.py", [
        ('if task.status != "running":', "if False:"),
    ], [G + "test_guard_finished_envelopes_rejected", HOP]),
    Mutant("failed results sent to done", "matrix_p2p/runtime/hop.py", [
        ('subject, outcome = self.names.failed, "failed"', 'subject, outcome = self.names.done, "failed"'),
    ], [G + "test_guard_done_and_failed_subjects"]),
    Mutant("retry count: never gives up", "matrix_p2p/runtime/hop.py", [
        ("if num_delivered >= self.spec.limits.max_deliveries:", "if False:"),
    ], [G + "test_guard_retry_count"]),
    Mutant("retry count: no delivery limit on arrival", "matrix_p2p/runtime/hop.py", [
        ("if num_delivered > limit:", "if False:"),
    ], [G + "test_guard_retry_count"]),
    Mutant("retry spacing: no backoff", "matrix_p2p/runtime/hop.py", [
        ("delay = max(retry.after_s, retry_delay(num_delivered, self.spec.limits.retry_backoff_s))",
         "delay = retry.after_s"),
    ], [G + "test_guard_retry_spacing"]),
    Mutant("breaker: a refusing replica not ejected", "matrix_p2p/llm/client.py", [
        ('return self._outcomes.failed(ep, "unavailable", f"{type(e).__name__}: {e}", health=True)',
         'return self._outcomes.failed(ep, "unavailable", f"{type(e).__name__}: {e}", health=False)'),
    ], [G + "test_guard_replica_that_refuses_ejected"]),
    Mutant("breaker: a hanging replica not ejected", "matrix_p2p/llm/client.py", [
        ("congestion=True, health=True)", "congestion=True, health=False)"),
    ], [G + "test_guard_replica_that_hangs_ejected"]),
    Mutant("config error: exit 1 instead of 2", "matrix_p2p/cli/__init__.py", [
        ("return 2 if isinstance(exc, ConfigError) else 1", "return 1"),
    ], [G + "test_guard_config_error_exit_2"]),
    Mutant("config error inside a task group: not unwrapped", "matrix_p2p/cli/__init__.py", [
        ("found = first_matrix_error(group)", "found = None"),
    ], [G + "test_guard_config_error_in_task_group_exit_2"]),
    Mutant("a cancelled fetch is cancelled (nats-py swallows it)", "matrix_p2p/bus/jetstream.py", [
        ("honour_cancel(cancels)", "pass"),
    ], ["tests/integration/test_fetch_cancel.py", HOP]),
    Mutant("liveness: a message its consumer will not deliver is never re-run",
           "matrix_p2p/liveness/heal.py", [
        ("self.ready.append(HealedDelivery(self, m, attempt))", "pass  # MUTANT"),
    ], [LIVE + "test_a_task_the_broker_will_not_deliver_finishes_exactly_once"]),
    Mutant("liveness: a re-run's ack leaves the held copy", "matrix_p2p/liveness/heal.py", [
        ("await h.bus.delete_msg(h.stream, self.seq)", "pass  # MUTANT"),
    ], [LIVE + "test_a_task_the_broker_will_not_deliver_finishes_exactly_once"]),
    Mutant("liveness: messages in flight taken for stuck ones", "matrix_p2p/liveness/watch.py", [
        ("return seq <= r.floor or r.ack_pending == 0", "return True  # MUTANT"),
    ], ["tests/unit/test_liveness_watch.py"]),
    Mutant("liveness: old messages re-run past the dedup window", "matrix_p2p/liveness/watch.py", [
        ("r.now - self.since(h) > self.safe_age_s", "False"),
    ], ["tests/unit/test_liveness_heal.py::test_an_old_stranded_task_is_dead_lettered_not_rerun"]),
]


def loose(old: str) -> re.Pattern[str]:
    """``old`` as a pattern in which any run of whitespace matches any whitespace."""
    parts = [re.escape(p) for p in re.split(r"\s+", old.strip())]
    return re.compile(r"\s+".join(parts))


def apply(text: str, edits: list[tuple[str, str]]) -> str | None:
    for old, new in edits:
        pat = loose(old)
        if len(pat.findall(text)) != 1:
            return None
        m = pat.search(text)
        assert m is not None
        text = text[:m.start()] + new + text[m.end():]
    return text


def copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    for f in files:
        if not f:
            continue
        src = ROOT / f.decode()
        if src.is_file():
            (dest / f.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f.decode())


def run_tests(tree: Path, tests: list[str], timeout_s: int) -> tuple[int, float, str]:
    env = dict(os.environ, PYTHONPATH=str(tree), MX_LOG_LEVEL="warning")
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, "-m", "pytest", *tests, "-x", "-q", "-m", "",
                            "-p", "no:cacheprovider", "--timeout", str(timeout_s)],
                           cwd=tree, env=env, capture_output=True, text=True, timeout=timeout_s * 4)
        return p.returncode, time.monotonic() - t0, p.stdout + p.stderr
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return -1, time.monotonic() - t0, out


def first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" ", 1)[1].split(" - ")[0].split("tests/integration/")[-1]
    return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("only", nargs="*", help="substrings of mutant names to run")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--timeout", type=int, default=60, help="per test, seconds")
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or any(o in m.name for o in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.name}  ({m.path})")
        return 0
    rows: list[tuple[str, str]] = []
    missed = 0
    with tempfile.TemporaryDirectory(prefix="mx-mutate-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        if not args.no_baseline:
            tests = sorted({t for m in chosen for t in m.tests})
            rc, secs, out = run_tests(tree, tests, args.timeout)
            if rc != 0:
                print(out[-4000:])
                print(f"baseline: the tests fail on the unmutated tree (rc {rc}); fix that first")
                return 1
            print(f"baseline: {len(tests)} test targets pass unmutated in {secs:.0f}s", flush=True)
        for m in chosen:
            target = tree / m.path
            original = target.read_text()
            mutated = apply(original, m.edits)
            if mutated is None:
                rows.append((m.name, "STALE (its text is no longer in the file)"))
                missed += 1
                continue
            target.write_text(mutated)
            try:
                rc, secs, out = run_tests(tree, m.tests, args.timeout)
            finally:
                target.write_text(original)
            if rc == 0:
                verdict = f"MISSED ({secs:.1f}s)"
                missed += 1
            elif rc == -1:
                verdict = f"caught only by the overall timeout ({secs:.0f}s)"
            else:
                verdict = f"caught by {first_failure(out)} ({secs:.1f}s)"
            rows.append((m.name, verdict))
            print(f"{m.name:55} {verdict}", flush=True)
    width = max(len(n) for n, _ in rows)
    print("\n" + "guard".ljust(width) + "  result")
    for name, verdict in rows:
        print(name.ljust(width) + "  " + verdict)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
