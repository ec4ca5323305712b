"""The rule that stops a clearly broken run (runset/broken.py), and its workflow limit."""

from __future__ import annotations

import pytest

from matrix_p2p.errors import ConfigError
from matrix_p2p.runset.broken import BrokenRun, normalise, stopped_message
from matrix_p2p.workflow.spec import AbortOnFailures, parse

BUG = "bug in agent 'a' raised KeyError: 'question'"


def test_trips_once_share_of_first_failed_the_same_way() -> None:
    rule = BrokenRun(20, 0.8)
    got = [rule.observe("failed", BUG) for _ in range(16)]
    assert got[:15] == [None] * 15
    assert got[15] == f'16 of the first 16 tasks failed with "{BUG}"'
    # sticky: the reason again, whatever comes next
    assert rule.observe("done", None) == got[15]


def test_successes_in_between_count_among_the_first() -> None:
    rule = BrokenRun(20, 0.8)
    for i in range(20):
        reason = rule.observe("done" if i in (3, 9) else "failed", f"timeout after {i}.5s")
    assert reason == '16 of the first 18 tasks failed with "timeout after 0.5s"'


def test_a_few_failures_among_many_successes_never_trip() -> None:
    rule = BrokenRun(20, 0.8)
    for i in range(1000):
        assert rule.observe("failed" if i % 5 == 0 else "done", BUG) is None
    # and late failures, however many, do not count: the rule is about the first tasks
    rule = BrokenRun(20, 0.8)
    for _ in range(20):
        rule.observe("done", None)
    assert all(rule.observe("failed", BUG) is None for _ in range(500))


def test_different_reasons_do_not_add_up() -> None:
    rule = BrokenRun(20, 0.8)
    for i in range(20):
        assert rule.observe("failed", ["KeyError: 'a'", "KeyError: 'b'"][i % 2]) is None


def test_numbers_and_ids_do_not_make_reasons_different() -> None:
    assert normalise("row 17: HTTP 500 after 2.5s") == normalise("row 4: HTTP 502 after 30s")
    assert (normalise("lease 3f2a9c1d-0b7e-4c4e-9a51-2d0c8e7f6a11 gone, task t-deadbeef99 at 0x7f3a2b")
            == normalise("lease 00000000-1111-2222-3333-444444444444 gone, task t-0123abcd45 at 0x1"))
    assert normalise("KeyError: 'question'") != normalise("KeyError: 'answer'")
    assert normalise("a \n  b") == "a b"


def test_first_zero_never_trips_and_share_one_needs_all() -> None:
    off = BrokenRun(0, 0.8)
    assert all(off.observe("failed", BUG) is None for _ in range(100))
    strict = BrokenRun(4, 1.0)
    assert [strict.observe("failed", BUG) for _ in range(4)][-1] == (
        f'4 of the first 4 tasks failed with "{BUG}"')
    strict = BrokenRun(4, 1.0)
    assert [strict.observe(s, BUG) for s in ("failed", "done", "failed", "failed")][-1] is None


def test_long_errors_are_shortened_and_kept_on_one_line() -> None:
    rule = BrokenRun(1, 1.0)
    reason = rule.observe("failed", "x" * 500 + "\ntraceback line")
    assert reason is not None and "\n" not in reason and reason.endswith('..."')
    assert len(reason) < 260


def test_from_the_workflow_limit() -> None:
    assert BrokenRun.from_limit(AbortOnFailures()).threshold == 16
    assert BrokenRun.from_limit(AbortOnFailures(first=10, share=0.5)).threshold == 5
    assert BrokenRun.from_limit(AbortOnFailures(first=10, share=0.7)).threshold == 7
    for off in (None, 0):
        rule = BrokenRun.from_limit(off)
        assert all(rule.observe("failed", BUG) is None for _ in range(50))


def test_stopped_message() -> None:
    assert stopped_message('2 of the first 2 tasks failed with "x"') == (
        'stopped: 2 of the first 2 tasks failed with "x": fix it, then re-run with '
        "--retry-failed (the unfinished tasks stay in the store)")


WF = """name: w
roles: {a: {agent: "m:C", llm: null}}
routing: {type: cycle, roles: [a]}
"""


def test_limit_default_and_disabling() -> None:
    assert parse(WF).limits.abort_on_failures == AbortOnFailures(first=20, share=0.8)
    assert parse(WF + "limits: {abort_on_failures: null}\n").limits.abort_on_failures is None
    assert parse(WF + "limits: {abort_on_failures: 0}\n").limits.abort_on_failures == 0
    got = parse(WF + "limits: {abort_on_failures: {first: 50}}\n").limits.abort_on_failures
    assert got == AbortOnFailures(first=50, share=0.8)


@pytest.mark.parametrize(("value", "message"), [
    ("3", "limits.abort_on_failures: give {first: N, share: S}, or 0 or null to never stop"),
    ("{first: -1}", "limits.abort_on_failures.first: must be at least 0 (0: never stop)"),
    ("{share: 0}", "limits.abort_on_failures.share: must be in (0, 1], got 0.0"),
    ("{share: 1.5}", "limits.abort_on_failures.share: must be in (0, 1], got 1.5"),
    ("{frist: 5}", "limits.abort_on_failures: Object contains unknown field `frist`"),
])
def test_limit_errors_name_the_field(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(WF + f"limits: {{abort_on_failures: {value}}}\n", path="w.yaml")
    assert str(exc.value) == f"w.yaml: {message}"
