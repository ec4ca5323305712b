"""``--where`` / ``--by`` expressions: what they select, and one-line errors that name the
column."""

from __future__ import annotations

from typing import Any

import pytest

from matrix_p2p.errors import ConfigError
from matrix_p2p.export.expr import parse

ROW: dict[str, Any] = {
    "id": "q1-t0", "status": "done", "trial": 1, "hops": 3,
    "result": {"reward": 0.5, "kept": True, "verdict": "pass", "zero": 0, "none": None,
               "tags": ["a", "b"]},
    "dialogue": [{"role": "teacher", "content": "hi"}],
}


@pytest.mark.parametrize(("text", "expected"), [
    ('status == "done"', True),
    ("status == 'done'", True),
    ('status != "done"', False),
    ("result.kept == true", True),
    ("result.kept", True),
    ("not result.kept", False),
    ("result.reward >= 0.5", True),
    ("result.reward > 0.5", False),
    ("result.reward < 1", True),
    ("result.reward <= -1", False),
    ("hops == 3", True),
    ("hops == 3.0", True),
    ("result.zero == false", False),  # true is not 1, false is not 0
    ("result.kept == 1", False),
    ('status == "done" and result.kept == true', True),
    ('status == "failed" or result.reward > 0', True),
    ('not (status == "failed" or result.reward > 1)', True),
    ('not status == "failed" and trial == 1', True),
    ("result.missing == null", True),
    ("result.none == null", True),
    ("result.none", False),
    ("result.missing > 0", False),  # ordering with null is false, not an error
    ("not result.missing", True),
    ('result.verdict > "a"', True),
    ('result.reward > "a"', False),  # a number and a string do not order
    ('dialogue.0.role == "teacher"', True),
    ('dialogue.5.role == "teacher"', False),
    ("result.tags.1 == 'b'", True),
    ("1e3 > 999", True),
    ('"a\\"b" == "a\\"b"', True),
    ("true and false or true", True),  # and binds tighter than or
    ("false and (false or true)", False),
])
def test_expressions_select_rows(text: str, expected: bool) -> None:
    assert parse(text).test(ROW) is expected


def test_value_is_the_field_or_the_truth_of_a_comparison() -> None:
    assert parse("result.reward").value(ROW) == 0.5
    assert parse('result.verdict == "pass"').value(ROW) is True
    assert parse("result.absent").value(ROW) is None


@pytest.mark.parametrize(("text", "message"), [
    ("status = 'done'", "--where: unexpected '=' at column 8 ('==' compares): status = 'done'"),
    ("reward >= 1", "--where: 'reward' does not start with a row field (one of id, workflow, "
                    "workflow_version, code_version, status, error, source, row_index, trial, "
                    "input, result, dialogue, usage, timings, hops, parent, children; an agent's "
                    "state is under result.) at column 1: reward >= 1"),
    ("status == ", "--where: expected a field, a string, a number, true, false or null, got "
                   "'end of the expression' at column 11: status == "),
    ("(status == 'done'", "--where: expected ')', got 'end of the expression' at column 18: "
                          "(status == 'done'"),
    ("status == 'done' result.kept", "--where: unexpected 'result.kept' (join conditions with "
                                     "and, or) at column 18: status == 'done' result.kept"),
    ("a && b", "--where: unexpected '&&' at column 3 (write 'and'): a && b"),
    ("status == 'done", "--where: unexpected \"'\" at column 11: status == 'done"),
    ("hops < 1 < 2", "--where: unexpected '<' (join conditions with and, or) at column 10: "
                     "hops < 1 < 2"),
    ("", "--where: expected a field, a string, a number, true, false or null, got "
         "'end of the expression' at column 1: "),
    ("and", "--where: expected a field, a string, a number, true, false or null, got 'and' at "
            "column 1: and"),
])
def test_a_bad_expression_is_one_line_naming_the_column(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(text)
    assert str(exc.value) == message
    assert "\n" not in str(exc.value)


def test_the_flag_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^--by: "):
        parse("reward", "--by")


def test_the_parser_never_evaluates_python() -> None:
    for text in ("__import__('os').system('true')", "result.__class__", "1 + 1", "[1]"):
        try:
            expr = parse(text)
        except ConfigError:
            continue
        assert expr.value(ROW) in (None, False, True)  # a missing field at most
