"""Which results belong to a submission, and when all of them came (embed/results.Wanted)."""

from __future__ import annotations

from matrix_p2p.embed.results import Wanted


def test_ids_want_exactly_their_tasks_and_complete_when_each_came() -> None:
    w = Wanted(["a-t0", "b-t0"])
    assert not w.offer("other-t0", "done")  # another submission's
    assert w.offer("a-t0", "done") and not w.complete
    assert not w.offer("a-t0", "done")  # a duplicate in the stream
    assert w.offer("b-t0", "failed") and w.complete


def test_a_retried_task_waits_for_the_attempt_named() -> None:
    w = Wanted(["a-t0~a2"])
    assert not w.offer("a-t0", "failed")  # the attempt it replaces: not handed out
    assert not w.complete
    assert w.offer("a-t0~a2", "done") and w.complete


def test_a_later_attempt_than_named_comes_after_the_one_it_supersedes() -> None:
    w = Wanted(["a-t0"])
    assert w.offer("a-t0", "failed") and w.complete
    assert w.offer("a-t0~a2", "done")  # a retry stored later: handed out too
    assert not w.offer("a-t0", "failed")  # stale now


def test_fan_out_children_of_a_wanted_task_are_awaited() -> None:
    w = Wanted(["p-t0"])
    assert w.offer("p-t0", "done", children=2) and not w.complete
    assert w.offer("p-t0/0", "done") and not w.complete
    assert not w.offer("p-t0/0", "done")
    assert not w.offer("q-t0/0", "done")  # another parent's
    assert w.offer("p-t0/1", "done") and w.complete


def test_expect_counts_distinct_tasks_and_none_follows_forever() -> None:
    w = Wanted(expect=2)
    assert w.offer("x", "done") and not w.complete
    assert not w.offer("x", "done")
    assert w.offer("y~a3", "done") and w.complete
    every = Wanted()
    assert every.offer("x", "done") and every.offer("y", "done") and not every.complete
    assert Wanted(expect=0).complete and Wanted([]).complete
