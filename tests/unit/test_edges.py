"""Edge behaviour: set-up calls wait for JetStream; wrapped errors stay one line."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import nats.errors
import pytest
import structlog

from matrix_p2p import bus as busmod
from matrix_p2p import cli
from matrix_p2p.errors import BusError


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()  # cli.main configured structlog for the whole process


async def test_setup_calls_retry_while_jetstream_is_not_ready() -> None:
    answers: list[BaseException | str] = [nats.errors.TimeoutError(),
                                          nats.errors.NoRespondersError(), "ok"]

    async def op() -> str:
        a = answers.pop(0)
        if isinstance(a, BaseException):
            raise a
        return a

    assert await busmod._when_ready("consumer judge", op) == "ok"
    assert answers == []


async def test_setup_calls_give_up_after_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(busmod, "SETUP_RETRY_S", 0.3)
    calls = 0

    async def op() -> None:
        nonlocal calls
        calls += 1
        raise nats.errors.TimeoutError

    with pytest.raises(TimeoutError):
        await busmod._when_ready("stream X", op)
    assert calls >= 2


def test_an_error_inside_a_task_group_is_still_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(args: argparse.Namespace) -> int:
        raise ExceptionGroup("unhandled errors in a TaskGroup", [
            ExceptionGroup("inner", [BusError("cannot create consumer judge on X: nats: timeout")])])

    monkeypatch.setattr(cli, "cmd_status", boom)
    assert cli.main(["status", "coral", "--nats", "nats://127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert err == "matrix_p2p: error: cannot create consumer judge on X: nats: timeout\n"


def test_other_exception_groups_are_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(args: argparse.Namespace) -> int:
        raise ExceptionGroup("bug", [ZeroDivisionError("x")])

    monkeypatch.setattr(cli, "cmd_status", boom)
    with pytest.raises(ExceptionGroup):
        cli.main(["status", "coral", "--nats", "nats://127.0.0.1:1"])
