"""The sandbox pool's pure state machine, driven by a fake clock."""

from __future__ import annotations

import itertools

import pytest

from matrix_p2p.backoff import Backoff
from matrix_p2p.sandbox.errors import UnknownLease
from matrix_p2p.sandbox.pool import Pool, Refusal


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_pool(size: int = 2, **kw: object) -> tuple[Pool, Clock]:
    clock = Clock()
    ids = (f"L{i}" for i in itertools.count())
    pool = Pool(size, clock, ttl_s=10.0, max_ttl_s=100.0, recheck=Backoff(2.0, 8.0, rng=lambda: 1.0),
                new_id=lambda: next(ids), **kw)  # type: ignore[arg-type]
    for slot in pool.slots:
        pool.cleaned(slot.index, True)  # the service builds every slot at start
    return pool, clock


def lease_one(pool: Pool, task: str = "t", ttl: float | None = None) -> str:
    slot = pool.reserve()
    assert isinstance(slot, int)
    return pool.grant(slot, task, ttl).id


def test_slots_start_cleaning_and_free_after_build() -> None:
    pool = Pool(3, Clock())
    assert pool.counts()["cleaning"] == 3
    assert isinstance(pool.reserve(), Refusal)
    pool.cleaned(1, True)
    assert pool.reserve() == 1


def test_acquire_until_exhausted_then_refusal_with_retry_after() -> None:
    pool, _ = make_pool(2, retry_after_s=1.5)
    a, b = lease_one(pool), lease_one(pool)
    assert {pool.get(a).slot, pool.get(b).slot} == {0, 1}
    got = pool.reserve()
    assert got == Refusal("exhausted", 1.5)
    assert pool.counters.refused == 1 and pool.counts()["leased"] == 2


def test_release_sends_slot_to_cleaning_and_back_to_free() -> None:
    pool, _ = make_pool(1)
    lease = lease_one(pool)
    ended = pool.release(lease)
    assert ended.slot == 0 and pool.slots[0].state == "cleaning"
    assert isinstance(pool.reserve(), Refusal)  # not handed out before it is wiped
    pool.cleaned(0, True)
    assert pool.reserve() == 0
    with pytest.raises(UnknownLease, match="unknown lease 'L0'"):
        pool.get(lease)


def test_ttl_expiry_reaps_and_renew_extends() -> None:
    pool, clock = make_pool(2)
    a = lease_one(pool)
    b = lease_one(pool, ttl=30.0)
    clock.now += 8
    pool.renew(a)  # expires at now + 10
    clock.now += 9  # a: 1 s left; b: 13 s left
    assert pool.reap() == []
    clock.now += 2
    reaped = pool.reap()
    assert [ls.id for ls in reaped] == [a]
    assert pool.slots[reaped[0].slot].state == "cleaning"
    assert pool.counters.reclaimed == 1
    clock.now += 20
    assert [ls.id for ls in pool.reap()] == [b]


def test_ttl_is_capped_and_floored() -> None:
    pool, clock = make_pool(2)
    assert pool.get(lease_one(pool, ttl=1e9)).expires_at == clock.now + 100.0
    assert pool.get(lease_one(pool, ttl=0.001)).expires_at == clock.now + 1.0


def test_execution_in_flight_is_never_reaped_and_renews_on_end() -> None:
    pool, clock = make_pool(1)
    lease = lease_one(pool)
    pool.begin_exec(lease)
    clock.now += 60
    assert pool.reap() == []
    pool.end_exec(lease)
    assert pool.get(lease).expires_at == clock.now + 10
    clock.now += 10
    assert len(pool.reap()) == 1


def test_end_exec_after_release_is_harmless() -> None:
    pool, _ = make_pool(1)
    lease = lease_one(pool)
    pool.begin_exec(lease)
    pool.release(lease)
    pool.end_exec(lease)
    assert pool.counts()["cleaning"] == 1


def test_failed_check_marks_unhealthy_and_rechecks_on_backoff() -> None:
    pool, clock = make_pool(2)
    slot = pool.reserve()
    assert slot == 0
    pool.failed(0)
    assert pool.slots[0].state == "unhealthy"
    assert pool.reserve() == 1  # the next caller gets the healthy one
    assert pool.due_rechecks() == []
    assert pool.next_deadline() == clock.now + 2.0
    clock.now += 2.0
    assert pool.due_rechecks() == [0]
    assert pool.slots[0].state == "cleaning"
    pool.cleaned(0, False)  # rebuilt, still failing: longer backoff
    assert pool.slots[0].next_check_at == clock.now + 4.0
    clock.now += 4.0
    assert pool.due_rechecks() == [0]
    pool.cleaned(0, True)
    assert pool.slots[0].state == "free" and pool.slots[0].failures == 0


def test_brake_engages_after_a_streak_and_one_success_releases_it() -> None:
    pool, clock = make_pool(3, brake_after=3, brake_s=20.0)
    for _ in range(2):
        slot = pool.reserve()
        assert isinstance(slot, int)
        pool.failed(slot)
    assert not pool.braked()
    assert pool.reserve() == 2
    pool.failed(2)
    assert pool.braked() and pool.counters.brakes == 1
    refusal = pool.reserve()
    assert refusal == Refusal("braked", 2.0)  # the first recheck is due before the brake ends
    clock.now += 5
    due = pool.due_rechecks()
    assert due == [0, 1, 2]
    pool.cleaned(0, True)  # a recheck passed
    assert not pool.braked()
    assert pool.reserve() == 0


def test_brake_lapses_after_its_time() -> None:
    pool, clock = make_pool(1, brake_after=1, brake_s=5.0)
    assert pool.reserve() == 0
    pool.failed(0)
    assert pool.braked()
    clock.now += 5
    assert not pool.braked()
    assert pool.reserve() == Refusal("exhausted", 1.0)  # the only slot is still unhealthy


def test_success_resets_the_streak() -> None:
    pool, _ = make_pool(2, brake_after=2)
    assert pool.reserve() == 0
    pool.failed(0)
    assert pool.reserve() == 1
    pool.grant(1, "t")
    assert pool.failure_streak == 0 and not pool.braked()


def test_release_all_and_unknown_leases() -> None:
    pool, _ = make_pool(2)
    ids = {lease_one(pool), lease_one(pool)}
    assert {ls.id for ls in pool.release_all()} == ids
    assert pool.leases == {} and pool.counts()["cleaning"] == 2
    for call in (pool.renew, pool.release, pool.begin_exec):
        with pytest.raises(UnknownLease):
            call("nope")


def test_wrong_state_transitions_are_bugs() -> None:
    pool, _ = make_pool(1)
    with pytest.raises(ValueError, match="slot 0 is free, expected checking"):
        pool.grant(0, "t")
    with pytest.raises(ValueError, match="not being checked"):
        pool.failed(0)


@pytest.mark.parametrize(("size", "ttl", "max_ttl"), [(0, 10.0, 20.0), (1, 0.0, 20.0), (1, 30.0, 20.0)])
def test_bad_pool_settings(size: int, ttl: float, max_ttl: float) -> None:
    with pytest.raises(ValueError, match="sandbox"):
        Pool(size, Clock(), ttl_s=ttl, max_ttl_s=max_ttl)
