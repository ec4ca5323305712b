"""Edge behaviour: wrapped errors stay one line (set-up retries: tests/unit/test_bus_errors.py)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest
import structlog

from matrix_p2p import cli
from matrix_p2p.errors import BusError


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()  # cli.main configured structlog for the whole process


def test_an_error_inside_a_task_group_is_still_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(args: argparse.Namespace) -> int:
        raise ExceptionGroup("unhandled errors in a TaskGroup", [
            ExceptionGroup("inner", [BusError("cannot create consumer judge on X: nats: timeout")])])

    monkeypatch.setattr(cli.data, "cmd_status", boom)
    assert cli.main(["status", "coral", "--nats", "nats://127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert err == "matrix_p2p: error: cannot create consumer judge on X: nats: timeout\n"


def test_other_exception_groups_are_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(args: argparse.Namespace) -> int:
        raise ExceptionGroup("bug", [ZeroDivisionError("x")])

    monkeypatch.setattr(cli.data, "cmd_status", boom)
    with pytest.raises(ExceptionGroup):
        cli.main(["status", "coral", "--nats", "nats://127.0.0.1:1"])


def test_old_flag_spellings_still_parse() -> None:
    args = cli.build_parser().parse_args(
        ["worker", "--workflow", "coral", "--role", "all", "--replicas", "3"])
    assert (args.workflow, args.workflow_flag, args.stream_replicas) == (None, "coral", 3)
    args = cli.build_parser().parse_args(["worker", "coral", "--role", "all"])
    assert (args.workflow, args.stream_replicas) == ("coral", None)
