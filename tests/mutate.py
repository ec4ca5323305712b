"""Break the guards of the exactly-once promise one at a time; show which test catches each.

    python -m tests.mutate            # all mutants (make mutate)
    python -m tests.mutate sink-dedup retry-count   # some of them
    python -m tests.mutate --list

Each mutant is a small textual change to one product file (ack before publish,
drop the msg-id, skip the sink's dedup, ...). The tree (tracked and untracked,
not ignored files) is copied once to a temporary directory; each mutant is
applied to the copy, the tests named for it run there with ``-x`` and a short
per-test timeout, and the file is restored. The table says, per guard, which
test failed first and how long that test ran (and the whole pytest run, start-up
included), or MISSED. A guard caught only by a timeout (pytest-timeout's, or the
run's own) is reported as TIMEOUT and counts as missed: a guard's test fails
fast on its own. A mutant whose text is no longer in the file (the code moved
on) is reported as STALE: update it. First the same tests run on the unmutated
copy (the baseline must pass). Not part of CI: this is how the tests are kept
honest.
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
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
G = "tests/integration/test_guards.py::"
HOP = "tests/integration/test_hop_faults.py"
BUS = "tests/integration/test_bus_contract.py::"
JSB = "tests/integration/test_bus_jetstream.py::"
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
# the guard tests of tracker issue 18 (one file per area)
GL = "tests/unit/test_guard_leases.py::"
GS = "tests/integration/test_guard_sandbox.py::"
GO = "tests/integration/test_guard_offload.py::"
GF = "tests/integration/test_guard_fanout.py::"
GA = "tests/integration/test_guard_attempts.py::"
GLLM = "tests/integration/test_guard_llm.py::"
GM = "tests/integration/test_guard_metrics.py::"
REG = "tests/unit/test_llm_registry.py::"
REGI = "tests/integration/test_llm_registry.py::"
FAN = "tests/unit/test_hop_fanout.py::"
CTX = "tests/unit/test_agent_context.py::"
NR = "tests/unit/test_nr_agents.py::"
STRUCT = "tests/unit/test_structured.py::"
CACHE = "tests/unit/test_llm_cache.py::"
CACHE_RUN = "tests/integration/test_llm_cache_run.py::"
VW = "tests/unit/test_vllm_wire.py::"
CONTRACT = "tests/vllm/test_contract.py::"
TOKENS = ("tests/integration/test_token_accounting.py::"
          "test_the_rows_usage_sums_to_the_servers_token_counters")
LIVE = "tests/integration/test_liveness.py::"
EXP_PLAN = "tests/unit/test_export_plan.py::"
EXP_VIEWS = "tests/unit/test_export_views.py::"
EXP_CLI = "tests/unit/test_export_cli.py::"
REP = "tests/unit/test_report.py::"
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
    # the bus path of issue 19: the PubAck is still awaited, a fetch holds nothing back
    Mutant("bus publish: returns before its PubAck", "matrix_p2p/bus/jetstream.py", [
        ("return duplicate(await fut)", "return False  # MUTANT: the PubAck not awaited"),
    ], [BUS + "test_refusals_are_worded_alike", BUS + "test_publish_dedups_by_msg_id"]),
    Mutant("bus publish: a PubAck that never comes is awaited forever",
           "matrix_p2p/bus/js_publish.py", [
        ("fut.set_exception(TimeoutError())", "pass  # MUTANT"),
    ], [JSB + "test_a_puback_that_never_comes_times_out"]),
    Mutant("hop timeout: the hop timer never cancels", "matrix_p2p/runtime/worker.py", [
        ("self._fired.add(task)\n task.cancel()", "self._fired.add(task)  # MUTANT"),
    ], ["tests/integration/test_flow.py::test_a_hop_past_its_timeout_is_retried_then_fails"]),
    Mutant("bus fetch: a waiting fetch holds what came until its batch is full",
           "matrix_p2p/bus/js_pull.py", [
        ("await self._pull(1, got, deadline, wait=True, expires_ns=expires_ns)",
         "await self._pull(batch, got, deadline, wait=True, expires_ns=expires_ns)"),
    ], [JSB + "test_a_waiting_fetch_hands_over_a_message_as_soon_as_it_arrives"]),
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
    Mutant("a cancelled fetch is cancelled (a wait that swallows it)", "matrix_p2p/bus/js_pull.py", [
        ("except TimeoutError:\n return None\n return self.queue.popleft()",
         "except (TimeoutError, asyncio.CancelledError):  # MUTANT\n                return None\n"
         "        return self.queue.popleft()"),
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
    Mutant("run set: plan holds every row (the whole input in memory)",
           "matrix_p2p/runset/taskset.py", [
        ("first[row.key] = (row.source, row.index)", "first[row.key] = (row.source, row.index, row)"),
        ("first at {_where(spec, *seen)}", "first at {_where(spec, *seen[:2])}"),
    ], [RS + "test_plan_does_not_hold_the_rows"]),
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
    # ---- issue 18: sandbox leases (resources, sandbox pool, service and client)
    Mutant("leases: a retried hop releases the leases it arrived with", "matrix_p2p/runtime/worker.py", [
        ("fresh = [lease for lease in task.leases if lease.ref not in held]",
         "fresh = list(task.leases)  # MUTANT"),
    ], [GL + "test_guard_retried_hop_releases_only_its_own_leases"]),
    Mutant("leases: a retried hop keeps its own leases (to their TTL)", "matrix_p2p/runtime/worker.py", [
        ("fresh = [lease for lease in task.leases if lease.ref not in held]", "fresh = []  # MUTANT"),
    ], [GL + "test_guard_retried_hop_releases_only_its_own_leases"]),
    Mutant("leases: sandbox renew margin zero (renewed only once expired)",
           "matrix_p2p/resources/sandbox.py", [
        ("self.renew_margin_s = res.ttl_s / 2", "self.renew_margin_s = 0.0  # MUTANT"),
    ], [GL + "test_guard_sandbox_lease_renewed_before_expiry"]),
    Mutant("leases: renewed only after the expiry", "matrix_p2p/resources/base.py", [
        ("found.expires_at - self.clock() < kind.renew_margin_s", "found.expires_at < self.clock()"),
    ], ["tests/unit/test_sandbox_resource.py::"
        "test_a_lease_near_its_expiry_is_renewed_when_used_and_kept_otherwise",
        GL + "test_guard_sandbox_lease_renewed_before_expiry"]),
    Mutant("reclaim: the service's maintenance never reaps", "matrix_p2p/sandbox/service.py", [
        ("self.reap()", "pass  # MUTANT"),
    ], [GS + "test_guard_expired_lease_reclaimed_by_the_service"]),
    Mutant("reclaim: a lease with an execution in flight is reaped", "matrix_p2p/sandbox/pool.py", [
        ("if ls.expires_at <= now and ls.busy == 0]", "if ls.expires_at <= now]"),
    ], ["tests/unit/test_sandbox_pool.py::test_execution_in_flight_is_never_reaped_and_renews_on_end"]),
    Mutant("reclaim: an ended lease's slot is never rebuilt", "matrix_p2p/sandbox/service.py", [
        ("self._tg.create_task(self._rebuild(lease.slot, check=False))", "pass  # MUTANT"),
    ], [GS + "test_guard_expired_lease_reclaimed_by_the_service"]),
    Mutant("sandbox client: Retry-After ignored (a backoff instead)", "matrix_p2p/sandbox/client.py", [
        ("delay = max(0.0, hinted - (self.clock() - sent)) if hinted is not None",
         "delay = self.backoff.delay(attempt) if hinted is not None"),
    ], [GS + "test_guard_sandbox_client_honours_retry_after"]),
    Mutant("sandbox client: Retry-After counted from the answer", "matrix_p2p/sandbox/client.py", [
        ("delay = max(0.0, hinted - (self.clock() - sent)) if hinted is not None",
         "delay = hinted if hinted is not None"),
    ], [GS + "test_guard_sandbox_client_honours_retry_after"]),
    Mutant("sandbox breaker: a full pool (503) counts as a failure", "matrix_p2p/sandbox/client.py", [
        ("if status >= 500 and status != 503:", "if status >= 500:"),
    ], [GS + "test_guard_sandbox_breaker_counts_only_server_failures"]),
    Mutant("sandbox breaker: an answer neither ends a streak nor closes", "matrix_p2p/sandbox/client.py", [
        ('elif self.breaker.on_answered(self.clock()) == "recovered":', "elif False:"),
    ], [GS + "test_guard_sandbox_breaker_counts_only_server_failures"]),
    # ---- offload
    Mutant("offload: objects deleted before the row is durable", "matrix_p2p/runtime/sink.py", [
        ("writer = await self._commit(writer, superseded)  # durable before the acks",
         "[await self.offload.delete_all(t) for _, t in keep if t is not None]; "
         "writer = await self._commit(writer, superseded)  # MUTANT"),
    ], [GO + "test_guard_objects_deleted_only_after_the_row_is_durable"]),
    Mutant("offload: a result acked although its delete failed", "matrix_p2p/runtime/sink.py", [
        ("continue  # unacked: redelivered, a duplicate then, deleted again", "pass  # MUTANT"),
    ], [GO + "test_guard_failed_delete_leaves_the_result_unacked"]),
    Mutant("offload: a hop published although its put failed", "matrix_p2p/runtime/worker.py", [
        ('return AgentRetry(reason=f"cannot offload values: {exc}"), []',
         "return outcome, children  # MUTANT"),
    ], [GO + "test_guard_failed_put_retries_the_hop"]),
    Mutant("offload: default threshold at the broker's max_payload", "matrix_p2p/workflow/spec.py", [
        ("offload_bytes: int | None = 256 * 1024", "offload_bytes: int | None = 1024 * 1024"),
    ], [GO + "test_guard_default_threshold_fits_the_broker"]),
    # ---- fan-out
    Mutant("fan-out: the parent ends before its children are published", "matrix_p2p/runtime/worker.py", [
        ("for child in children:  # before the parent's end: a crash redoes them all\n"
         " await self.bus.publish(child.subject, child.data, msg_id=child.msg_id)\n"
         " await self.bus.publish(p.subject, p.data, msg_id=p.msg_id)",
         "await self.bus.publish(p.subject, p.data, msg_id=p.msg_id)  # MUTANT\n"
         "            for child in children:\n"
         "                await self.bus.publish(child.subject, child.data, msg_id=child.msg_id)"),
    ], [GF + "test_guard_fan_out_children_published_before_the_parent_ends"]),
    Mutant("fan-out: run finished once the parents are written", "matrix_p2p/runset/completion.py", [
        ("for i in range(children):", "for i in range(0):  # MUTANT"),
    ], [GF + "test_guard_fan_out_run_waits_for_every_child"]),
    # ---- code versions and attempts
    Mutant("code version: the router's code left out", "matrix_p2p/workflow/version.py", [
        ("refs.add(spec.routing.router)", "pass  # MUTANT"),
    ], [GA + "test_guard_code_version_covers_agents_and_router"]),
    Mutant("code version: the modules' sources left out", "matrix_p2p/workflow/version.py", [
        ("h.update(Path(source).read_bytes())", "pass  # MUTANT"),
    ], [GA + "test_guard_code_version_covers_agents_and_router"]),
    Mutant("retry-failed: the last attempt in stream order", "matrix_p2p/runtime/attempts.py", [
        ('if order.offer(task.id, task.status) in ("new", "supersedes"):',
         'if order.offer(task.id, task.status) != "duplicate":'),
    ], [GA + "test_guard_retry_failed_resubmits_the_latest_failed_attempts"]),
    Mutant("attempts: an older attempt supersedes a newer one", "matrix_p2p/runtime/attempts.py", [
        ("if have[0] > n:", "if False:"),
    ], [GA + "test_guard_retry_failed_resubmits_the_latest_failed_attempts",
        GA + "test_guard_output_keeps_the_latest_attempt"]),
    Mutant("retry-failed: done tasks resubmitted", "matrix_p2p/runtime/attempts.py", [
        ('if task.status != "failed" or (task.error or "").startswith("bad input row"):',
         'if (task.error or "").startswith("bad input row"):'),
    ], [GA + "test_guard_retry_failed_resubmits_the_latest_failed_attempts"]),
    Mutant("retry-failed: bad input rows resubmitted", "matrix_p2p/runtime/attempts.py", [
        ('if task.status != "failed" or (task.error or "").startswith("bad input row"):',
         'if task.status != "failed":'),
    ], [GA + "test_guard_retry_failed_resubmits_the_latest_failed_attempts"]),
    Mutant("retry-failed: another code version's tasks resubmitted", "matrix_p2p/runtime/attempts.py", [
        ("if namespace is not None and namespace_of(task.id) != namespace:", "if False:"),
    ], [GA + "test_guard_retry_failed_resubmits_the_latest_failed_attempts"]),
    Mutant("retry-failed: an attempt resubmitted twice", "matrix_p2p/runtime/attempts.py", [
        ("if await kv.exists(kv_key(nxt.id)):", "if False:"),
    ], [GA + "test_guard_retry_failed_resubmits_the_latest_failed_attempts"]),
    Mutant("output rebuild: the last attempt in stream order", "matrix_p2p/runtime/sink_state.py", [
        ('if accept(task.id) and latest.offer(task.id, task.status) in ("new", "supersedes"):',
         'if accept(task.id) and latest.offer(task.id, task.status) != "duplicate":'),
    ], [GA + "test_guard_output_keeps_the_latest_attempt"]),
    # ---- exit status
    Mutant("exit status: from this run's failures only", "matrix_p2p/cli/run.py", [
        ("if result.dataset_failed and not args.accept_failures:",
         "if result.failed and not args.accept_failures:"),
    ], [GA + "test_guard_exit_status_from_the_output"]),
    Mutant("exit status: the output's failures counted from this run", "matrix_p2p/runtime/local_run.py", [
        ("dataset_failed=sink.latest.counts()[1]", "dataset_failed=sink.failed"),
    ], [GA + "test_guard_run_reports_failures_already_in_the_output"]),
    # ---- the LLM client: breaker and backoff
    Mutant("LLM breaker: a 5xx not counted", "matrix_p2p/llm/outcomes.py", [
        ('f"HTTP {status}: {snippet}", status=status, health=True)',
         'f"HTTP {status}: {snippet}", status=status, health=False)'),
    ], [GLLM + "test_guard_llm_breaker_counts_only_health_failures"]),
    Mutant("LLM breaker: a 429 counts as a failure", "matrix_p2p/llm/outcomes.py", [
        ('return self.answered(ep, "rate_limited", f"HTTP 429: {snippet}", status, retry_after)',
         'return self.failed(ep, "rate_limited", f"HTTP 429: {snippet}", status=status, health=True)'),
    ], [GLLM + "test_guard_llm_breaker_counts_only_health_failures"]),
    Mutant("LLM breaker: a 4xx counts as a failure", "matrix_p2p/llm/outcomes.py", [
        ('return self.answered(ep, "bad_request", f"HTTP {status}: {snippet}", status)',
         'return self.failed(ep, "bad_request", f"HTTP {status}: {snippet}", status=status, health=True)'),
    ], [GLLM + "test_guard_llm_breaker_counts_only_health_failures"]),
    Mutant("LLM breaker: an answer does not end a failure streak", "matrix_p2p/llm/breaker.py", [
        ("return self.on_success(now)", "return None  # MUTANT"),
    ], [GLLM + "test_guard_llm_breaker_counts_only_health_failures"]),
    Mutant("LLM breaker: our own bugs eject the endpoint", "matrix_p2p/llm/client.py", [
        ('f"{type(e).__name__}: {e}", health=False)', 'f"{type(e).__name__}: {e}", health=True)'),
    ], [GLLM + "test_guard_llm_breaker_ignores_our_own_bugs"]),
    Mutant("LLM backoff: none once every endpoint failed", "matrix_p2p/llm/client.py", [
        (") and result.retry_after_s is None:\n await self._sleep(self._backoff.delay(retry))",
         ") and result.retry_after_s is None:\n                pass  # MUTANT"),
    ], [GLLM + "test_guard_llm_backoff_between_retries"]),
    Mutant("LLM backoff: the same delay on every retry", "matrix_p2p/llm/client.py", [
        (") and result.retry_after_s is None:\n await self._sleep(self._backoff.delay(retry))",
         ") and result.retry_after_s is None:\n"
         "                await self._sleep(self._backoff.delay(0))  # MUTANT"),
    ], [GLLM + "test_guard_llm_backoff_between_retries"]),
    Mutant("LLM backoff: waits although an endpoint is untried", "matrix_p2p/llm/client.py", [
        ("stay or not self._endpoints.has_untried(tried, self.clock())", "True  # MUTANT"),
    ], [GLLM + "test_guard_llm_backoff_between_retries"]),
    Mutant("backoff: full jitter (a retry may come back at once)", "matrix_p2p/backoff.py", [
        ("return c / 2 + self._rng() * c / 2", "return self._rng() * c"),
    ], ["tests/unit/test_llm_breaker_backoff.py::test_backoff_bounds_and_cap"]),
    # ---- metrics and permissions
    Mutant("metrics: kept-only rows-written counts dropped tasks", "matrix_p2p/runtime/sink.py", [
        ("self.metrics.sink_rows_written(sum(written for _, written in fresh))",
         "self.metrics.sink_rows_written(len(fresh))"),
    ], [GM + "test_guard_metrics_count_the_rows_of_the_file"]),
    Mutant("metrics: a duplicate result counted as finished and written", "matrix_p2p/runtime/sink.py", [
        ("fresh.append((task.status, skipped is None or is_kept(task)))\n keep.append((d, task))",
         "pass  # MUTANT\n"
         "                    fresh.append((task.status, skipped is None or is_kept(task)))\n"
         "                    keep.append((d, task))"),
    ], [GM + "test_guard_metrics_count_the_rows_of_the_file"]),
    Mutant("permissions: the source cannot read the results back", "matrix_p2p/permissions.py", [
        ('f"{API}.STREAM.INFO.{names.tasks_stream}", *_read_stream(names.results_stream)]',
         'f"{API}.STREAM.INFO.{names.tasks_stream}"]'),
    ], [GM + "test_guard_source_may_read_the_results", GM + "test_guard_source_user_can_retry_failed"]),
    # each token in one row (fan-out and token accounting)
    Mutant("fan-out: child copies parent usage", "matrix_p2p/runtime/hop.py", [
        ('state[SPAWN_KEY] = {"index": i, "from_turn": len(shared), "from_hop": 0}',
         'state[SPAWN_KEY] = {"index": i, "from_turn": 0, "from_hop": 0}'),
    ], [FAN + "test_each_token_is_counted_in_one_row_and_a_child_holds_no_sibling_turn",
        TOKENS + "[natural_reasoning]"]),
    Mutant("fan-out: child keeps sibling turns", "matrix_p2p/runtime/hop.py", [
        ("turns=shared + own,", "turns=list(task.turns),"),
    ], [FAN + "test_each_token_is_counted_in_one_row_and_a_child_holds_no_sibling_turn",
        TOKENS + "[natural_reasoning]"]),
    Mutant("fan-out: parent keeps its children's turns", "matrix_p2p/runtime/hop.py", [
        ("turns=children[0].turns[:start],", "turns=task.turns,"),
    ], [FAN + "test_each_token_is_counted_in_one_row_and_a_child_holds_no_sibling_turn",
        TOKENS + "[natural_reasoning]"]),
    Mutant("fan-out: row ignores the child's turn range", "matrix_p2p/runtime/hop.py", [
        ('for key in ("replay", SPAWN_KEY):', 'for key in ("replay",):'),
    ], [FAN + "test_each_token_is_counted_in_one_row_and_a_child_holds_no_sibling_turn",
        TOKENS + "[natural_reasoning]"]),
    Mutant("fan-out: parent stays a kept row", "matrix_p2p/runtime/hop.py", [
        ("if k not in NOT_A_ROW}", "if True}"),
    ], [FAN + "test_children_are_published_first_then_the_parent_ends_with_their_count",
        NR + "test_a_fanned_out_document_is_not_a_row_and_each_question_holds_its_own_turns"]),
    Mutant("spawn: a turn given to two children", "matrix_p2p/agent.py", [
        ("if id(t) in taken:", "if False:"),
    ], [CTX + "test_spawn_refuses_turns_that_would_count_twice"]),
    Mutant("usage after the last say dropped", "matrix_p2p/agent.py", [
        ("if self._llm_calls:\n self.say(\"\")",
         "if self._llm_calls and len(self.task.turns) == self._hop_start:\n"
         "            self.say(\"\")"),
    ], [CTX + "test_calls_after_the_last_say_get_a_turn_of_their_own"]),
    Mutant("failed task drops its last hop's tokens", "matrix_p2p/runtime/worker.py", [
        ("ctx.finish()  # the task ends with these turns", "pass  # MUTANT"),
    ], [CTX + "test_a_failed_task_keeps_the_tokens_its_last_hop_cost"]),
    Mutant("status tokens/s counts a child's parent turns", "matrix_p2p/runtime/rates.py", [
        ("from_turn, _ = own_turns(task)", "from_turn = 0"),
    ], ["tests/integration/test_rates.py"]),
    Mutant("a hop's turns overlap in time", "matrix_p2p/agent.py", [
        ("self._started = now\n return turn", "return turn"),
    ], [CTX + "test_a_hops_turns_do_not_overlap_in_time"]),
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
    # export (matrix_p2p/export/): rows to training data
    Mutant("export splits: by position, not by the row's id", "matrix_p2p/export/plan.py", [
        ("_add(plan, split_of(row_id, opts.splits),",
         "_add(plan, opts.splits[plan.rows_read % len(opts.splits)][0],"),
    ], [EXP_PLAN + "test_splits_do_not_move_when_the_rows_are_reversed",
        EXP_PLAN + "test_splits_do_not_move_when_the_rows_are_reordered"]),
    Mutant("export splits: a row's trials and children split apart", "matrix_p2p/export/splits.py", [
        ("u = fraction(row_key(task_id))", "u = fraction(task_id)"),
    ], [EXP_PLAN + "test_a_rows_trials_attempts_and_children_share_its_split"]),
    Mutant("export views: tool results dropped", "matrix_p2p/export/views.py", [
        ("elif role == view.tool_role:", "elif False:"),
    ], [EXP_VIEWS + "test_tau_is_the_assistants_side_with_tool_calls_and_results",
        EXP_VIEWS + "test_tau_real_row_keeps_every_tool_call_and_result"]),
    Mutant("export views: tool calls dropped", "matrix_p2p/export/views.py", [
        ('msgs.append(_assistant(content, meta.get("tool_calls")))',
         "msgs.append(_assistant(content, None))"),
    ], [EXP_VIEWS + "test_tau_is_the_assistants_side_with_tool_calls_and_results"]),
    Mutant("export views: a tool call without its result kept", "matrix_p2p/export/views.py", [
        ('if open_calls: raise Skip("a tool call has no result")', "pass"),
    ], [EXP_VIEWS + "test_a_broken_trace_gives_no_example_and_says_why"]),
    Mutant("export plan: a row twice", "matrix_p2p/export/plan.py", [
        ("if row_id in seen:", "if False:"),
    ], [EXP_PLAN + "test_every_row_is_an_example_or_counted_with_its_reason"]),
    Mutant("export plan: failed rows exported", "matrix_p2p/export/plan.py", [
        ('if row.get("status") != "done" and not opts.include_failed:', "if False:"),
    ], [EXP_PLAN + "test_every_row_is_an_example_or_counted_with_its_reason"]),
    Mutant("export pairs: a tie made a pair", "matrix_p2p/export/pairs.py", [
        ("if best.score == worst.score:", "if False:"),
    ], [EXP_PLAN + "test_the_best_and_worst_trial_of_each_row_make_a_pair"]),
    Mutant("export pairs: rows in no pair not counted", "matrix_p2p/export/plan.py", [
        ('plan.skip(s.row_id, "neither the best nor the worst trial of its row")', "pass"),
    ], [EXP_PLAN + "test_the_best_and_worst_trial_of_each_row_make_a_pair"]),
    Mutant("export write: shards each with their own schema", "matrix_p2p/export/write.py", [
        ("table = pa.Table.from_pylist([_columns(e) for e in examples], schema=schema)",
         "table = pa.Table.from_pylist([_columns(e) for e in examples])"),
    ], [EXP_CLI + "test_a_dataset_directory_with_shards_and_its_card"]),
    Mutant("export write: a folder of other things replaced", "matrix_p2p/export/write.py", [
        ("if not _is_export(to):", "if False:"),
    ], [EXP_CLI + "test_an_existing_target_is_kept_unless_overwrite"]),
    Mutant("export write: the rows file itself overwritten", "matrix_p2p/export/write.py", [
        ("if p.resolve() in resolved:", "if False:"),
    ], [EXP_CLI + "test_user_mistakes_are_one_line_and_exit_2"]),
    Mutant("report: a replay's or a child's row counts its original's turns",
           "matrix_p2p/report/stats.py", [
        ('start = int(mark.get("from_turn", 0) or 0)', "start = 0  # MUTANT"),
    ], [REP + "test_the_reports_figures_are_the_rows_figures"]),
    Mutant("report: a row twice goes unreported", "matrix_p2p/report/stats.py", [
        ("if n > 1}", "if n > 2}"),
    ], [REP + "test_a_row_twice_is_reported"]),
    Mutant("report: the page shows the rows' text unescaped", "matrix_p2p/report/html.py", [
        ('f"{escape(text)}{calls}</div>"', 'f"{text}{calls}</div>"'),
    ], [REP + "test_the_page_is_self_contained_and_escapes_the_rows"]),
    Mutant("report: a Parquet null read as a filter status", "matrix_p2p/report/stats.py", [
        ('if result.get("kept") is not None:', 'if "kept" in result:'),
    ], [REP + "test_parquet_rows_give_the_same_report"]),
    Mutant("report: a file of no rows reported as nothing", "matrix_p2p/report/job.py", [
        ("if not rows:", "if False:"),
    ], [REP + "test_bad_inputs_are_one_line_errors"]),
    Mutant("report: --html replaces the rows file", "matrix_p2p/report/job.py", [
        ("if to.resolve() == rows_file.resolve():", "if False:"),
    ], [REP + "test_bad_inputs_are_one_line_errors"]),
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
    Mutant("permissions: a role may not read its task stream (liveness stalls)",
           "matrix_p2p/permissions.py", [
        ('*results, *_read_stream(names.tasks_stream),', "*results,"),
    ], ["tests/unit/test_permissions.py::"
        "test_a_role_consumes_its_own_subject_and_sends_only_where_routing_can"]),
    Mutant("structured outputs: no limit on re-asks", "matrix_p2p/llm/structured.py", [
        ("return reasks_done < max_reasks", "return True  # MUTANT"),
    ], [STRUCT + "test_re_asks_stop_at_the_limit"]),
    Mutant("structured outputs: an invalid answer accepted", "matrix_p2p/agent.py", [
        ("value = fmt.parse(result.text)", "value = None  # MUTANT"),
    ], [STRUCT + "test_an_invalid_answer_is_re_asked_with_the_error_and_every_attempt_counts_once"]),
    Mutant("structured outputs: a re-ask's tokens not counted", "matrix_p2p/agent.py", [
        ("result = await self._call_llm(asked, params)",
         "result = await (self._call_llm(asked, params) if not reasks else "
         "self._llm.chat(asked, role=self.role.name, **params))  # MUTANT"),
    ], [STRUCT + "test_after_the_limit_the_task_fails_with_the_reason_and_keeps_the_tokens"]),
    Mutant("response cache: the key without the seed", "matrix_p2p/llm/cache.py", [
        ("what = {k: v for k, v in body.items() if k not in _NOT_IN_KEY}",
         "what = {k: v for k, v in body.items() if k not in _NOT_IN_KEY | {'seed'}}"),
    ], [CACHE + "test_the_key_changes_with_what_decides_the_answer"]),
    Mutant("response cache: the key without the model", "matrix_p2p/llm/cache.py", [
        ('what["model"] = model', 'what.pop("model", None)  # MUTANT'),
    ], [CACHE + "test_the_key_changes_with_the_model_and_the_kind"]),
    Mutant("response cache: a hit's tokens counted again", "matrix_p2p/llm/cache.py", [
        ("prompt_tokens=0, completion_tokens=0)",
         "prompt_tokens=e.prompt_tokens, completion_tokens=e.completion_tokens)"),
    ], [CACHE + "test_a_hit_is_the_answer_with_no_tokens_and_counts_the_saving"]),
    Mutant("response cache: a hit counted as generated in the row", "matrix_p2p/agent.py", [
        ("if isinstance(result, LLMResponse) and result.cached:",
         "if False:  # MUTANT"),
    ], [CACHE + "test_a_hit_adds_no_tokens_to_the_row_and_the_row_says_it_was_a_hit"]),
    Mutant("response cache: --no-cache ignored", "matrix_p2p/runtime/local_run.py", [
        ("cache_bus=bus if opts.cache else None", "cache_bus=bus"),
    ], [CACHE_RUN + "test_a_new_version_with_a_new_judge_prompt_re_asks_only_the_judge"]),
    # the replica registry (issue 20): a lapsed entry gets no traffic, a stopped
    # registrar removes its entry, the routing rule reads the published load
    Mutant("registry: a lapsed entry stays live (its TTL ignored)", "matrix_p2p/llm/registry.py", [
        ("return wall_now - reg.updated_at <= reg.ttl_s", "return True"),
    ], [REG + "test_a_lapsed_entry_gets_no_traffic",
        REGI + "test_a_client_follows_the_registry_new_replicas_get_traffic_lapsed_ones_none"]),
    Mutant("registry: a replica gone from the registry keeps its traffic",
           "matrix_p2p/llm/endpoints.py", [
        ("ep.published = None\n self._maybe_remove(ep)", "ep.published = None"),
    ], [REG + "test_a_lapsed_entry_gets_no_traffic",
        REGI + "test_a_client_follows_the_registry_new_replicas_get_traffic_lapsed_ones_none"]),
    Mutant("registry: a stopped registrar leaves its entry", "matrix_p2p/llm/registrar.py", [
        ("if self.registered:\n await self._withdraw()",
         "if False:  # MUTANT\n                    await self._withdraw()"),
    ], [REGI + "test_registrar_announces_the_server_with_its_load_and_withdraws_on_stop"]),
    Mutant("routing: the published load ignored (least outstanding only)", "matrix_p2p/llm/pool.py", [
        ("if any(ep.published is not None for ep in admissible):", "if False:"),
    ], [REG + "test_select_is_least_outstanding_without_load_and_weighs_it_with",
        REGI + "test_a_client_follows_the_registry_new_replicas_get_traffic_lapsed_ones_none"]),
    # ---- held to vLLM (issue 20): what the client reads off a real server; the simulator's limits
    Mutant("vLLM metrics: the waiting queue counted twice (by_reason series)", "matrix_p2p/llm/wire.py", [
        ('if not rest or rest[0] not in "{ ":\n continue', "pass  # MUTANT"),
    ], [VW + "test_queue_depth_is_not_counted_twice_with_the_by_reason_series"]),
    Mutant("vLLM metrics: no fallback to the pre-0.9 KV-cache name", "matrix_p2p/llm/wire.py", [
        ('"vllm:gpu_cache_usage_perc",\n', ""),
    ], [VW + "test_kv_cache_usage_new_name_first_then_the_old_one"]),
    Mutant("vLLM errors: the reason not on one line", "matrix_p2p/llm/wire.py", [
        ('one_line = " ".join(reason.split())', "one_line = reason"),
    ], [VW + "test_error_reason_is_the_servers_message_on_one_line"]),
    Mutant("sim max_model_len: a prompt over the window accepted", "matrix_p2p/sim/answer.py", [
        ("if n_prompt > max_model_len:", "if n_prompt > 10**12:  # MUTANT"),
    ], [VW + "test_sim_context_window_as_vllm_checks_it",
        CONTRACT + "test_prompt_over_max_model_len_is_a_permanent_failure[sim]"]),
    Mutant("sim max_model_len: max_tokens over the window accepted", "matrix_p2p/sim/answer.py", [
        ("if max_tokens is not None and max_tokens > max_model_len:", "if False:  # MUTANT"),
    ], [VW + "test_sim_context_window_as_vllm_checks_it"]),
    Mutant("sim max_model_len: max_tokens not clamped to what the window leaves",
           "matrix_p2p/sim/answer.py", [
        ("else min(max_tokens, left)", "else max_tokens"),
    ], [VW + "test_sim_context_window_as_vllm_checks_it"]),
    Mutant("sim max_model_len: refused as a retryable 503", "matrix_p2p/sim/server.py", [
        ('return _error(400, str(exc), "BadRequestError", param=exc.param)',
         'return _error(503, str(exc), "X")'),
    ], [CONTRACT + "test_prompt_over_max_model_len_is_a_permanent_failure[sim]"]),
    Mutant("silent broker: nats-py's default pings (a cut-off node noticed after minutes)",
           "matrix_p2p/bus/connection.py", [
        ('"ping_interval": PING_INTERVAL_S,', ""),
    ], ["tests/integration/test_silent_broker.py::test_a_silent_broker_is_noticed_within_seconds"]),
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


@dataclass
class Outcome:
    rc: int  # pytest's exit status; -1: killed by the run's own timeout
    secs: float  # the whole pytest run
    output: str
    failed: str = "?"  # the first failing test
    failed_s: float | None = None  # how long that test ran
    timed_out: bool = False  # it failed by pytest-timeout, not by an assertion


def run_tests(tree: Path, tests: list[str], timeout_s: int) -> Outcome:
    env = dict(os.environ, PYTHONPATH=str(tree), MX_LOG_LEVEL="warning")
    report = tree / ".mutate-report.xml"
    report.unlink(missing_ok=True)
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, "-m", "pytest", *tests, "-x", "-q", "-m", "",
                            "-p", "no:cacheprovider", "--timeout", str(timeout_s),
                            f"--junitxml={report}"],
                           cwd=tree, env=env, capture_output=True, text=True, timeout=timeout_s * 4)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return Outcome(-1, time.monotonic() - t0, out, timed_out=True)
    outcome = Outcome(p.returncode, time.monotonic() - t0, p.stdout + p.stderr)
    outcome.failed = first_failure(outcome.output)
    failing = failed_case(report)
    if failing is not None:
        outcome.failed_s, outcome.timed_out = failing
    return outcome


def first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" ", 1)[1].split(" - ")[0].split("tests/integration/")[-1]
    return "?"


def failed_case(report: Path) -> tuple[float, bool] | None:
    """(seconds, whether by a timeout) of the first failing test in a JUnit report."""
    try:
        root = ET.parse(report).getroot()
    except (OSError, ET.ParseError):
        return None
    for case in root.iter("testcase"):
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            message = (bad.get("message") or "") + (bad.text or "")[:2000]
            return float(case.get("time") or 0.0), "Timeout (>" in message
    return None


def verdict_of(o: Outcome) -> tuple[str, bool]:
    """The table's cell for one mutant, and whether it counts as missed."""
    if o.rc == 0:
        return f"MISSED ({o.secs:.1f}s)", True
    if o.rc == -1:
        return f"TIMEOUT: caught only by the run's overall timeout ({o.secs:.0f}s)", True
    took = f"{o.failed_s:.1f}s" if o.failed_s is not None else "?"
    if o.timed_out:
        return f"TIMEOUT: {o.failed} failed only by its timeout ({took}; run {o.secs:.0f}s)", True
    return f"caught by {o.failed} in {took} (run {o.secs:.1f}s)", False


# `make test` (and so CI) runs these first: one breakage of each kind of promise, each caught
# by a fast test, about two minutes in all. `make mutate` runs every one.
CI_SUBSET = (
    "run set: duplicate source ids pass",
    "run set: finished without the announced children",
    "attempts: a new attempt keeps the failed attempt's code version",
    "atomic files: a fixed temp name",
    "summary children: rows beyond the expected tasks",
    "fan-out: child keeps sibling turns",
    "liveness: messages in flight taken for stuck ones",
    "leases: a retried hop releases the leases it arrived with",
    "LLM breaker: a 429 counts as a failure",
    "backoff: full jitter (a retry may come back at once)",
    "broken run: late failures count too",
    "export splits: by position, not by the row's id",
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("only", nargs="*", help="substrings of mutant names to run")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--timeout", type=int, default=60, help="per test, seconds")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--ci", action="store_true", help="only the subset `make test` runs (CI_SUBSET)")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or any(o in m.name for o in args.only)]
    if args.ci:
        chosen = [m for m in chosen if m.name in CI_SUBSET]
        unknown = set(CI_SUBSET) - {m.name for m in MUTANTS}
        if unknown:
            print(f"CI_SUBSET names no mutant: {sorted(unknown)}")
            return 1
    if args.list:
        for m in chosen:
            print(f"{m.name}  ({m.path})")
        return 0
    rows: list[tuple[str, str]] = []
    missed = 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mx-mutate-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        if not args.no_baseline:
            tests = sorted({t for m in chosen for t in m.tests})
            base = run_tests(tree, tests, args.timeout)
            if base.rc != 0:
                print(base.output[-4000:])
                print(f"baseline: the tests fail on the unmutated tree (rc {base.rc}); fix that first")
                return 1
            print(f"baseline: {len(tests)} test targets pass unmutated in {base.secs:.0f}s",
                  flush=True)
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
                verdict, bad = verdict_of(run_tests(tree, m.tests, args.timeout))
            finally:
                target.write_text(original)
            missed += bad
            rows.append((m.name, verdict))
            print(f"{m.name:55} {verdict}", flush=True)
    width = max(len(n) for n, _ in rows)
    print("\n" + "guard".ljust(width) + "  result")
    for name, verdict in rows:
        print(name.ljust(width) + "  " + verdict)
    print(f"\n{len(rows) - missed} of {len(rows)} caught; {missed} missed, stale or by a timeout "
          f"({time.monotonic() - started:.0f}s in all)")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
