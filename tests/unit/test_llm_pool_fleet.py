from __future__ import annotations

from matrix_p2p.llm.breaker import CircuitBreaker
from matrix_p2p.llm.fleet import (
    EndpointState,
    FleetState,
    InMemoryFleetState,
    remote_effect,
    significant_change,
)
from matrix_p2p.llm.limiter import AIMDLimiter
from matrix_p2p.llm.pool import Endpoint, StickyMap, normalise_url, select
from matrix_p2p.llm.wire import parse_endpoints_file, parse_retry_after, parse_waiting


def ep(url: str, limit: int = 4, inflight: int = 0) -> Endpoint:
    e = Endpoint(url=url, limiter=AIMDLimiter(limit, 1, 100), breaker=CircuitBreaker(2, 5.0))
    e.inflight = inflight
    return e


def test_normalise_url() -> None:
    assert normalise_url("http://h:8000/v1/") == "http://h:8000"
    assert normalise_url(" http://h:8000 ") == "http://h:8000"


def test_least_outstanding() -> None:
    a, b, c = ep("a", inflight=3), ep("b", inflight=1), ep("c", inflight=2)
    assert select([a, b, c], 0.0) is b


def test_full_blocked_ejected_and_removed_are_skipped() -> None:
    full = ep("full", limit=2, inflight=2)
    blocked = ep("blocked")
    blocked.limiter.block_until(10.0)
    dead = ep("dead")
    dead.breaker.on_failure(0.0)
    dead.breaker.on_failure(0.0)
    gone = ep("gone")
    gone.removed = True
    busy = ep("busy", limit=10, inflight=5)
    assert select([full, blocked, dead, gone, busy], 1.0) is busy
    assert select([full, blocked, dead, gone], 1.0) is None
    assert select([full, blocked, dead, gone], 10.0) is blocked
    # after the cooldown the ejected endpoint takes one probe
    assert select([dead], 6.0) is dead
    dead.admit(6.0)
    assert select([dead], 6.1) is None


def test_sticky_holds_while_admissible_then_falls_back() -> None:
    a, b = ep("a", limit=2, inflight=1), ep("b", inflight=0)
    assert select([a, b], 0.0, sticky=a) is a  # busier but pinned
    a.inflight = 2
    assert select([a, b], 0.0, sticky=a) is b  # full: fall back


def test_exclude_prefers_untried() -> None:
    a, b = ep("a"), ep("b", inflight=3)
    assert select([a, b], 0.0, exclude={"a"}) is b
    assert select([a], 0.0, exclude={"a"}) is a  # nothing else: same one again


def test_admit_tracks_invariants() -> None:
    e = ep("a", limit=2)
    e.admit(0.0)
    e.admit(0.0)
    assert e.max_inflight_seen == 2
    assert e.limit_violations == 0
    e.admit(0.0)  # the pool would never do this; the counter catches it
    assert e.limit_violations == 1


def test_sticky_map_is_bounded_lru() -> None:
    m = StickyMap(capacity=2)
    m.pin("t1", "a")
    m.pin("t2", "b")
    assert m.get("t1") == "a"  # refreshes t1
    m.pin("t3", "c")
    assert m.get("t2") is None
    assert m.get("t1") == "a"
    assert len(m) == 2


async def test_in_memory_fleet_state_notifies() -> None:
    fleet = InMemoryFleetState()
    assert isinstance(fleet, FleetState)
    seen: list[tuple[str, int]] = []
    unsub = fleet.subscribe(lambda url, st: seen.append((url, st.limit)))
    await fleet.publish("http://a", EndpointState(limit=7, worker="w1"))
    unsub()
    await fleet.publish("http://a", EndpointState(limit=9, worker="w1"))
    assert seen == [("http://a", 7)]
    assert fleet.latest()["http://a"].limit == 9


def test_remote_effect_blocks_and_signals_fresh_429() -> None:
    st = EndpointState(limit=10, retry_after_until=1010.0, last_429_at=999.0, worker="w2")
    eff = remote_effect(st, now=50.0, wall_now=1000.0, seen_429_at=0.0)
    assert eff.block_until == 60.0  # translated to the local monotonic clock
    assert eff.congestion
    again = remote_effect(st, now=51.0, wall_now=1001.0, seen_429_at=999.0)
    assert not again.congestion  # already acted upon
    stale = remote_effect(
        EndpointState(limit=10, last_429_at=900.0), now=0.0, wall_now=1000.0, seen_429_at=0.0
    )
    assert stale.block_until is None
    assert not stale.congestion


def test_significant_change() -> None:
    base = EndpointState(limit=100)
    assert significant_change(None, base)
    assert not significant_change(base, EndpointState(limit=105))
    assert significant_change(base, EndpointState(limit=111))
    assert significant_change(base, EndpointState(limit=100, healthy=False))
    assert significant_change(base, EndpointState(limit=100, last_429_at=1.0))


def test_endpoint_state_roundtrips_msgspec() -> None:
    import msgspec

    st = EndpointState(limit=3, healthy=False, retry_after_until=1.5, worker="w")
    assert msgspec.json.decode(msgspec.json.encode(st), type=EndpointState) == st
    # unknown fields from a newer worker are ignored
    raw = b'{"limit": 4, "future_field": 1}'
    assert msgspec.json.decode(raw, type=EndpointState).limit == 4


def test_parsers() -> None:
    assert parse_endpoints_file("# fleet\nhttp://a:8000/v1\n\n  http://b:8000 # spare\n") == [
        "http://a:8000",
        "http://b:8000",
    ]
    assert parse_retry_after("2", 0.0) == 2.0
    assert parse_retry_after("0.25", 0.0) == 0.25
    assert parse_retry_after("garbage", 0.0) is None
    assert parse_retry_after(None, 0.0) is None
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", 4.0) == 6.0
    text = (
        "# HELP vllm:num_requests_waiting x\n"
        'vllm:num_requests_waiting{model_name="m"} 3.0\n'
        'vllm:num_requests_running{model_name="m"} 9.0\n'
    )
    assert parse_waiting(text) == 3
    assert parse_waiting("other 1\n") is None
