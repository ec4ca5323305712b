"""The sessions table (sandbox/sessions.py): pure decisions, no processes."""

from __future__ import annotations

import pytest

from matrix_p2p.sandbox.errors import NoSession
from matrix_p2p.sandbox.sessions import Respawn, SessionSpec, SessionTable

PROG = SessionSpec.of(["python3", "prog.py"], {"B": "2", "A": "1"})
OTHER = SessionSpec.of(["python3", "other.py"])


def live_table() -> SessionTable:
    table = SessionTable()
    assert table.start("L", PROG) == "spawn"
    assert table.spawned("L") == 1
    return table


def test_a_spec_is_the_same_whatever_the_order_of_its_env() -> None:
    assert SessionSpec.of(["python3", "prog.py"], {"A": "1", "B": "2"}) == PROG
    assert SessionSpec.of(["python3", "prog.py"], {"A": "1"}) != PROG
    assert SessionSpec.of(["python3", "prog.py"], {"A": "1", "B": "2"}, cwd="sub") != PROG


def test_a_call_before_any_start_is_no_session() -> None:
    table = SessionTable()
    with pytest.raises(NoSession, match="no session on lease 'L' \\(POST /sessions/start first\\)"):
        table.call("L")
    table.answered("L")  # an answer for a lease that has none changes no row
    assert table.rows == {}


def test_start_keeps_the_same_live_program_and_replaces_another() -> None:
    table = live_table()
    assert table.start("L", PROG) == "keep"
    assert table.rows["L"].generation == 1 and table.counters.started == 1
    assert table.start("L", OTHER) == "replace"
    assert table.spawned("L") == 2
    assert table.rows["L"].spec == OTHER and table.live() == 1


def test_a_live_session_is_sent_to_and_counts_its_calls() -> None:
    table = live_table()
    assert table.call("L") is None
    table.answered("L")
    table.answered("L")
    assert table.rows["L"].calls == 2 and table.counters.calls == 2


def test_a_dead_session_is_respawned_by_the_next_call_saying_why_once() -> None:
    table = live_table()
    assert table.died("L", 1, "ended (exited with status 3)")
    assert table.live() == 0 and table.counters.died == 1
    assert table.call("L") == Respawn("ended (exited with status 3)")
    assert table.call("L") == Respawn("ended (exited with status 3)")  # deciding changes nothing
    assert table.spawned("L", respawn=True) == 2
    assert table.call("L") is None  # the new process is live: nothing more to report
    assert table.rows["L"].lost is None
    assert (table.counters.started, table.counters.restarted) == (2, 1)


def test_a_timeout_is_a_death_counted_as_a_timeout() -> None:
    table = live_table()
    assert table.died("L", 1, "did not answer within 2 s", timed_out=True)
    assert (table.counters.died, table.counters.timeouts) == (1, 1)
    assert table.call("L") == Respawn("did not answer within 2 s")


def test_the_death_of_an_older_generation_leaves_the_new_one_live() -> None:
    table = live_table()
    assert table.start("L", OTHER) == "replace"
    table.spawned("L")
    assert not table.died("L", 1, "ended (killed by SIGKILL)")  # the replaced process's exit
    assert table.call("L") is None and table.counters.died == 0
    assert table.died("L", 2, "the new one ended")
    assert table.call("L") == Respawn("the new one ended")


def test_a_death_is_reported_once() -> None:
    table = live_table()
    assert table.died("L", 1, "first")
    assert not table.died("L", 1, "second")  # the exit callback after the call's own report
    assert table.rows["L"].lost == "first" and table.counters.died == 1


def test_start_after_a_death_spawns_without_replacing() -> None:
    table = live_table()
    table.died("L", 1, "gone")
    assert table.start("L", PROG) == "spawn"
    assert table.spawned("L") == 2


def test_a_failed_spawn_leaves_the_session_dead_for_the_next_call() -> None:
    table = SessionTable()
    table.start("L", PROG)
    table.spawn_failed("L", "could not be started: no such file")
    assert table.call("L") == Respawn("could not be started: no such file")
    assert table.counters.started == 0


def test_dropping_a_lease_forgets_its_session_and_ignores_its_death() -> None:
    table = live_table()
    assert table.drop("L") is not None and table.drop("L") is None
    assert not table.died("L", 1, "killed with its slot")
    assert table.counters.died == 0 and table.live() == 0
    with pytest.raises(NoSession):
        table.call("L")
