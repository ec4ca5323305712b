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
RS = "tests/unit/test_runset.py::"
RSP = "tests/integration/test_runset_property.py::test_every_run_writes_exactly_its_own_tasks"
SUM = "tests/integration/test_summary_run.py::"
OUT = "tests/integration/test_output_files.py::"
FILES = "tests/unit/test_sink_files.py::"
ROWS = "tests/unit/test_rows.py::"
PRE = "tests/integration/test_preflight.py::"
BRK = "tests/integration/test_broken_run.py::"
CLOSED_LLM = PRE + "test_run_with_a_closed_llm_url_exits_2_at_once_with_one_line"
SS = "tests/integration/test_sandbox_sessions.py::"
SSU = "tests/unit/test_sandbox_sessions.py::"
TAU = "tests/unit/test_tau_session.py::"


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
    Mutant("preflight: run does not check its servers", "matrix_p2p/runtime/local_run.py", [
        ("if opts.preflight:", "if False:"),
    ], [CLOSED_LLM, PRE + "test_a_model_no_endpoint_serves_is_a_config_error"]),
    Mutant("preflight: no endpoint answering accepted", "matrix_p2p/resources/preflight.py", [
        ("if not up:", "if False:"),
    ], ["tests/unit/test_preflight.py", CLOSED_LLM]),
    Mutant("preflight: a model nobody serves accepted", "matrix_p2p/resources/preflight.py", [
        ("if not serving:", "if False:"),
    ], ["tests/unit/test_preflight.py", PRE + "test_a_model_no_endpoint_serves_is_a_config_error"]),
    Mutant("preflight: no sandbox server answering accepted", "matrix_p2p/resources/preflight.py", [
        ("if sneed.required:", "if False:"),
    ], ["tests/unit/test_preflight.py", PRE + "test_run_with_no_sandbox_server_answering_exits_2"]),
    Mutant("preflight: the worker does not check", "matrix_p2p/cli/worker.py", [
        ("if not args.no_preflight:", "if False:"),
    ], [PRE + "test_worker_with_a_closed_llm_url_exits_2"]),
    Mutant("preflight: serve does not check", "matrix_p2p/api.py", [
        ('if args.flag("preflight", preflight):', "if False:"),
    ], [PRE + "test_serve_checks_first"]),
    Mutant("broken run: the rule never trips", "matrix_p2p/runset/broken.py", [
        ("if n >= self.threshold:", "if False:"),
    ], ["tests/unit/test_broken_run.py", BRK + "test_run_stops_with_exit_1_and_the_reason"]),
    Mutant("broken run: late failures count too", "matrix_p2p/runset/broken.py", [
        ("if self.tripped is not None or self.seen >= self.first:",
         "if self.tripped is not None:"),
    ], ["tests/unit/test_broken_run.py"]),
    Mutant("broken run: reasons compared with their numbers", "matrix_p2p/runset/broken.py", [
        ("reason = normalise(text)", "reason = text"),
    ], ["tests/unit/test_broken_run.py"]),
    Mutant("broken run: run does not stop", "matrix_p2p/runtime/local_run.py", [
        ("and broken.tripped is None:", ":"),
    ], [BRK + "test_a_broken_run_stops_and_the_next_run_finishes_it"]),
    Mutant("broken run: the sink does not report written tasks", "matrix_p2p/runtime/sink.py", [
        ("self.on_written(task)", "pass"),
    ], [BRK + "test_a_broken_run_stops_and_the_next_run_finishes_it"]),
    Mutant("broken run: exit status not 1", "matrix_p2p/cli/run.py", [
        ("if result.aborted is not None:", "if False:"),
    ], [BRK + "test_run_stops_with_exit_1_and_the_reason"]),
    Mutant("broken run: the API returns as if finished", "matrix_p2p/api.py", [
        ("raise RunAborted(result)", "pass"),
    ], [BRK + "test_the_api_raises_run_aborted"]),
    Mutant("a cancelled fetch is cancelled (nats-py swallows it)", "matrix_p2p/bus/jetstream.py", [
        ("honour_cancel(cancels)", "pass"),
    ], ["tests/integration/test_fetch_cancel.py", HOP]),
    # issue 17: a run is a set of tasks
    Mutant("run set: the sink writes every result in the store", "matrix_p2p/runtime/sink.py", [
        ("if self.tasks is not None: return self.tasks.owns(task_id)", "pass"),
    ], [RS + "test_a_sink_with_a_task_set_writes_exactly_its_tasks", RSP]),
    Mutant("run set: an output written for another set is trusted",
           "matrix_p2p/runtime/sink_state.py", [
        ("if side.tasks != tasks:", "if False:"),
    ], [RS + "test_a_sink_with_a_task_set_writes_exactly_its_tasks"]),
    Mutant("run set: duplicate source ids pass", "matrix_p2p/runset/taskset.py", [
        ("if seen is not None:", "if False:"),
    ], [RS + "test_plan_names_the_first_duplicate_id_and_both_lines"]),
    Mutant("run set: finished without the announced children", "matrix_p2p/runset/completion.py", [
        ("if child not in self._latest: self._missing.add(child)", "pass"),
    ], [RS + "test_completion_waits_for_every_task_its_children_and_later_attempts"]),
    Mutant("run set: a later attempt is not waited for", "matrix_p2p/runset/completion.py", [
        ("if have is None or have[0] < attempt: self._missing.add(base)", "pass"),
    ], [RS + "test_completion_waits_for_every_task_its_children_and_later_attempts"]),
    Mutant("run set: an interrupted retry's attempts not looked up", "matrix_p2p/runset/ended.py", [
        ("for tid in await submitted_attempts(submitted, sink.completion.failed_bases()):",
         "for tid in []:"),
    ], [RS + "test_a_run_waits_for_the_attempt_an_interrupted_retry_submitted"]),
    Mutant("attempts: a new attempt keeps the failed attempt's code version",
           "matrix_p2p/runtime/attempts.py", [
        ("code_version=task.code_version if code_version is None else code_version",
         "code_version=task.code_version"),
    ], [RS + "test_a_new_attempt_carries_the_current_code_version"]),
    Mutant("attempts: --retry-failed retries other runs' tasks", "matrix_p2p/runtime/attempts.py", [
        ("if owns is not None and not owns(task.id):", "if False:"),
    ], [RS + "test_retry_failed_retries_only_the_runs_own_tasks_with_the_new_code"]),
    Mutant("summary rows: kept-only's left-out tasks counted as rows", "matrix_p2p/runtime/sink.py", [
        ("return len(self.written) - len(self.left_out & self.written)",
         "return len(self.written)"),
    ], [SUM + "test_kept_only_rows_are_the_lines_of_the_file"]),
    Mutant("summary children: rows beyond the expected tasks", "matrix_p2p/runtime/summary.py", [
        ("children=result.children,", "children=max(0, result.rows - result.expected),"),
    ], ["tests/unit/test_summary.py::test_summary_counts_children_and_filters"]),
    Mutant("sink command: rows rebuilt from the stream not counted", "matrix_p2p/runtime/sink.py", [
        ("self.rebuilt = self.count", "self.rebuilt = 0"),
    ], [SUM + "test_the_sink_command_says_what_it_wrote"]),
    Mutant("figures: a row without the field counted as zero", "matrix_p2p/report/figures.py", [
        ("self.missing += 1\n return", "self.missing += 1; v = 0  # MUTANT"),
    ], ["tests/unit/test_figures.py"]),
    Mutant("figures: the rows already in the file left out on resume", "matrix_p2p/runtime/sink.py", [
        ("self._refigure(rows_read)", "pass"),
    ], [SUM + "test_kept_only_rows_are_the_lines_of_the_file"]),
    Mutant("figures: a superseded attempt's row still counted", "matrix_p2p/runtime/sink.py", [
        ("self._refigure(lines)", "pass"),
    ], [SUM + "test_a_retried_task_counts_once_in_the_figures"]),
    Mutant("one writer per output: no lock", "matrix_p2p/runtime/files.py", [
        ("fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", "pass"),
    ], [OUT + "test_a_second_sink_on_one_output_is_refused_before_it_touches_it",
        OUT + "test_a_second_run_or_sink_on_one_output_is_refused_before_it_starts"]),
    Mutant("one writer per output: run locks only in its sink, after starting the broker",
           "matrix_p2p/runtime/local_run.py", [
        ("async with _held(lock), _broker(", "async with _broker("),
        ("tasks=tasks, lock=lock)", "tasks=tasks)"),
    ], [OUT + "test_a_second_run_or_sink_on_one_output_is_refused_before_it_starts"]),
    Mutant("atomic files: a fixed temp name", "matrix_p2p/runtime/files.py", [
        ('tmp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp")',
         'tmp = path.with_name(path.name + ".tmp")'),
        ("os.O_WRONLY | os.O_CREAT | os.O_EXCL", "os.O_WRONLY | os.O_CREAT | os.O_TRUNC"),
    ], [FILES + "test_two_writers_replacing_one_file_never_share_a_temp_file"]),
    Mutant("atomic files: a failed write leaves its temp", "matrix_p2p/runtime/files.py", [
        ("tmp.unlink(missing_ok=True)", "pass"),
    ], [FILES + "test_a_failed_replacement_leaves_the_file_and_no_temp",
        FILES + "test_a_failed_parquet_write_leaves_no_temp"]),
    Mutant("the output's check on start: a task twice trusted", "matrix_p2p/runtime/sink_state.py", [
        ('if verdict != "new":', "if False:"),
    ], [OUT + "test_a_trusted_output_holding_a_task_twice_is_rebuilt"]),
    Mutant("formats: any --out name written as JSON lines", "matrix_p2p/runtime/files.py", [
        ('raise ConfigError(f"--out {out}: {_unsupported(out)}")', 'return "jsonl"'),
    ], [FILES + "test_an_output_of_another_format_is_one_line",
        OUT + "test_an_out_of_another_format_is_one_line"]),
    Mutant("formats: any source file read as JSON lines", "matrix_p2p/runtime/rows.py", [
        ("if found is not None: return found", 'return found or ".jsonl"'),
    ], [ROWS + "test_a_source_of_another_format_is_one_line_before_any_row",
        OUT + "test_a_source_of_another_format_is_one_line_before_anything"]),
    Mutant("results: another submission's rows handed out", "matrix_p2p/embed/results.py", [
        ("if self.attempt is not None and (base not in self.attempt or n < self.attempt[base]):",
         "if False:"),
    ], ["tests/unit/test_embed_wanted.py",
        "tests/integration/test_api.py::test_submit_and_collect_around_serve"]),
    Mutant("api: one URL string iterated per character", "matrix_p2p/embed/args.py", [
        ("value = [value]  # one URL, not one per character", "pass"),
    ], ["tests/unit/test_embed_args.py"]),
    Mutant("api key: an unset api_key_env goes unnoticed", "matrix_p2p/resources/llm.py", [
        ("if res.api_key_env is not None and not os.environ.get(res.api_key_env):", "if False:"),
    ], ["tests/integration/test_model_settings_wire.py"]),
    Mutant("model settings: top_p, stop, seed, model not sent", "matrix_p2p/agent.py", [
        ("if value is not None:\n params.setdefault(name, value)", "pass"),
    ], ["tests/integration/test_model_settings_wire.py"]),
    Mutant("library logging: structlog left printing", "matrix_p2p/logs.py", [
        ("if structlog.is_configured():", "if True:  # MUTANT"),
    ], ["tests/integration/test_api.py::test_run_prints_nothing_unless_the_application_"
        "configures_logging"]),
    Mutant("sessions: a dead session is not started again", "matrix_p2p/sandbox/sessions.py", [
        ('return Respawn(row.lost or "it was never started")', "return None  # MUTANT"),
    ], [SSU + "test_a_dead_session_is_respawned_by_the_next_call_saying_why_once",
        SS + "test_a_session_that_dies_in_a_call_is_reported_then_restarted_without_its_state"]),
    Mutant("sessions: an older process's death marks the new one dead", "matrix_p2p/sandbox/sessions.py", [
        ("if row is None or row.generation != generation or not row.live:",
         "if row is None or not row.live:"),
    ], [SSU + "test_the_death_of_an_older_generation_leaves_the_new_one_live"]),
    Mutant("sessions: not killed with their slot (release, reclaim)", "matrix_p2p/sandbox/runner.py", [
        ("self.track(key, proto)\n proto.when_exited(lambda: self.untrack(key, proto))", "pass  # MUTANT"),
    ], [SS + "test_a_session_is_killed_when_its_lease_is_released",
        SS + "test_a_session_is_killed_when_its_lease_is_reclaimed"]),
    Mutant("sessions: a hung call's process not killed at the timeout",
           "matrix_p2p/sandbox/session_host.py", [
        ("pipe.kill()\n with contextlib.suppress(TimeoutError):",
         "with contextlib.suppress(TimeoutError):  # MUTANT: no kill"),
    ], [SS + "test_a_hung_call_times_out_and_its_process_is_killed"]),
    Mutant("sessions: two reply lines for one request accepted", "matrix_p2p/sandbox/session_host.py", [
        ("elif self._out.strip():", "elif False:"),
    ], [SS + "test_a_session_that_breaks_the_protocol_is_killed_and_restarted"]),
    Mutant("sessions: a call in flight does not hold its lease", "matrix_p2p/sandbox/service.py", [
        ("lease = self.pool.begin_exec(lease_id)\n try:\n return await self.sessions.call(",
         "lease = self.pool.get(lease_id)  # MUTANT\n        try:\n"
         "            return await self.sessions.call("),
    ], [SS + "test_a_session_call_in_flight_keeps_its_lease_from_being_reclaimed"]),
    Mutant("sessions: the client does not translate a session's 409", "matrix_p2p/sandbox/client.py", [
        ("if status == 409:", "if False:"),
    ], [SS + "test_a_session_that_dies_in_a_call_is_reported_then_restarted_without_its_state"]),
    Mutant("tau session: the database not re-read after a write (dict order drifts)", "agents/tau/env.py", [
        ("db = json.loads(save_db(db, path))", "save_db(db, path)"),
    ], [TAU + "test_a_session_answers_byte_for_byte_what_a_process_per_call_prints"]),
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
