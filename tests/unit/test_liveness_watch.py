"""The liveness watch (``matrix_p2p.liveness.watch``): pure, readings in, decisions out."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from matrix_p2p.liveness.watch import Frontier, Held, Reading, Rerun, Verdict, Watch, undeliverable

NOW = 10_000.0


def reading(t: float, *, held: list[int], pending: int = 0, ack_pending: int = 0,
            delivered: int = 10, floor: int = 10, stored_at: float = NOW) -> Reading:
    return Reading(now=t, pending=pending, ack_pending=ack_pending, delivered=delivered,
                   floor=floor, held=tuple(Held(seq=s, time=stored_at) for s in held))


def wq(hold_s: float = 2.0) -> Watch:
    return Watch("work_queue", hold_s=hold_s, safe_age_s=300.0, checks=3)


def test_undeliverable() -> None:
    r = reading(NOW, held=[], pending=0, ack_pending=1, delivered=10, floor=5)
    # at or below the floor: acked by the consumer, still held by a work queue (on a
    # limits stream: never handed to the owner, so skipped rather than acked)
    assert undeliverable(r, 5)
    # passed while something is unacked: in flight, as far as a reading can tell
    assert not undeliverable(r, 7)
    # above what it delivered while it says nothing is pending
    assert undeliverable(r, 11)
    assert not undeliverable(reading(NOW, held=[], pending=1), 11)
    # passed with nothing unacked: dropped without an ack (the max-deliveries drop)
    assert undeliverable(reading(NOW, held=[], ack_pending=0, delivered=10, floor=5), 7)


def test_the_frontier_of_what_a_sink_was_handed() -> None:
    f = Frontier()
    f.add(3)  # handed before the first reading
    assert f.start(floor=1) == 2 and f.seen == {3}
    f.add(2)
    f.add(5)
    assert f.start(floor=9) == 4 and f.seen == {5}  # the floor moves only the first start
    f.pass_to(4)  # seq 4 is not stored (a gap): 5 follows
    assert f.low == 5 and f.seen == set() and f.start(floor=0) == 6
    f.add(5)  # at or below low: nothing to keep
    assert f.seen == set()


def test_a_message_is_rerun_only_after_checks_in_a_row_spanning_hold() -> None:
    w = wq(hold_s=5.0)
    assert w.observe(reading(NOW, held=[3])) == Verdict()
    assert w.observe(reading(NOW + 1, held=[3])) == Verdict()
    assert w.observe(reading(NOW + 2, held=[3])) == Verdict()  # three readings, 2 s < hold
    assert w.observe(reading(NOW + 5, held=[3])) == Verdict(rerun=(Rerun(seq=3, attempt=1),))
    assert w.busy == {3}
    assert w.observe(reading(NOW + 6, held=[3])) == Verdict()  # being re-run: left alone


def test_a_suspect_that_goes_away_starts_over() -> None:
    w = wq()
    w.observe(reading(NOW, held=[3]))
    w.observe(reading(NOW + 1, held=[3]))
    w.observe(reading(NOW + 2, held=[]))  # acked after all: its removal raced the reading
    assert w.observe(reading(NOW + 3, held=[3])) == Verdict()
    assert w.observe(reading(NOW + 4, held=[3])) == Verdict()
    assert w.observe(reading(NOW + 5, held=[3])).rerun == (Rerun(seq=3, attempt=1),)


def test_messages_in_flight_are_never_rerun_however_long() -> None:
    w = wq()
    for i in range(100):  # a long hop kept alive by heartbeats: delivered, unacked
        r = reading(NOW + i * 30, held=[7, 8], pending=4, ack_pending=2, delivered=9, floor=6)
        assert w.observe(r) == Verdict()


@given(st.lists(st.tuples(st.integers(1, 50), st.integers(0, 20), st.integers(0, 5)),
                min_size=1, max_size=30))
def test_no_reading_of_a_healthy_consumer_reruns_anything(steps: list[tuple[int, int, int]]) -> None:
    """Healthy: every held message is in flight (floor < seq <= delivered, something unacked)
    or still to deliver (above delivered, with pending > 0)."""
    w = wq(hold_s=0.0)
    for i, (floor, inflight, new) in enumerate(steps):
        delivered = floor + inflight
        held = list(range(floor + 1, delivered + 1 + new))
        r = reading(NOW + i * 100, held=held, pending=new, ack_pending=inflight,
                    delivered=delivered, floor=floor)
        assert w.observe(r) == Verdict()


def test_handed_back_it_is_rerun_again_not_before_its_delay_with_the_next_attempt() -> None:
    w = wq(hold_s=0.0)
    for i in range(3):
        v = w.observe(reading(NOW + i, held=[3]))
    assert v.rerun == (Rerun(seq=3, attempt=1),)
    w.settled(3, gone=False, retry_at=NOW + 50)  # the hop asked to retry in 47 s
    for i in range(3, 6):
        assert w.observe(reading(NOW + i, held=[3])) == Verdict()
    assert w.observe(reading(NOW + 50, held=[3])).rerun == (Rerun(seq=3, attempt=2),)
    w.settled(3, gone=True)
    assert w.busy == frozenset()


def test_an_old_work_queue_message_is_parked_not_rerun() -> None:
    """Stored long ago and passed long ago: a successor its hop published may be out of the
    dedup window, so a re-run could finish the task twice."""
    w = wq()
    for i in range(3):
        v = w.observe(reading(NOW + i, held=[3], stored_at=NOW - 1000))
    assert v == Verdict(park=(3,))


def test_old_but_delivered_recently_is_rerun() -> None:
    """Stored long ago (a backlog), but a recent reading saw the consumer not yet past it:
    any successor is younger than that reading."""
    w = wq()
    w.observe(reading(NOW, held=[3, 4], pending=2, delivered=2, floor=2, stored_at=NOW - 1000))
    for i in range(1, 4):
        v = w.observe(reading(NOW + 100 + i, held=[3], stored_at=NOW - 1000))
    assert v.rerun == (Rerun(seq=3, attempt=1),)
    assert w.since(Held(seq=3, time=NOW - 1000)) == NOW


def test_a_consumer_restored_from_an_older_state_does_not_make_a_message_look_young() -> None:
    w = wq()
    w.observe(reading(NOW, held=[], delivered=10, floor=10))
    # after a broker crash the consumer shows less than it once delivered
    w.observe(reading(NOW + 200, held=[], pending=5, delivered=2, floor=2))
    assert w.since(Held(seq=5, time=NOW - 1000)) == NOW - 1000
    assert w.since(Held(seq=11, time=NOW - 1000)) == NOW + 200


def test_a_sink_reruns_a_result_once_and_never_parks() -> None:
    w = Watch("limits", hold_s=0.0, safe_age_s=300.0, checks=2)
    r = [reading(NOW + i, held=[12], delivered=11, floor=11, stored_at=NOW - 5000)
         for i in range(4)]
    assert w.observe(r[0]) == Verdict()
    assert w.observe(r[1]) == Verdict(rerun=(Rerun(seq=12, attempt=1),))
    w.settled(12, gone=True)
    assert w.observe(r[2]) == Verdict() and w.observe(r[3]) == Verdict()
