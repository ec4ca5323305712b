"""The replica registry's pure parts: what a registrar publishes, which entries a client
follows, and the routing rule that weighs published load (``llm.scoring``)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from matrix_p2p.llm.breaker import CircuitBreaker
from matrix_p2p.llm.config import LLMConfig
from matrix_p2p.llm.discovery import Follower
from matrix_p2p.llm.endpoints import Endpoints
from matrix_p2p.llm.limiter import AIMDLimiter
from matrix_p2p.llm.pool import Endpoint, select
from matrix_p2p.llm.registry import (
    PrefixCounters,
    Registration,
    decode,
    encode,
    is_live,
    metric_sum,
    parse_load,
    parse_models,
    serving,
)
from matrix_p2p.llm.scoring import STICKY_SLACK, Candidate, ReplicaLoad, choose, cost

VLLM_NEW = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
vllm:num_requests_running{engine="0",model_name="m"} 7.0
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.42
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 250.0
vllm:num_requests_running_extra 99
"""
VLLM_OLD = """\
vllm:num_requests_running{model_name="m"} 2.0
vllm:num_requests_waiting{model_name="m"} 0.0
vllm:gpu_cache_usage_perc{model_name="m"} 0.9
"""


def test_load_is_read_from_vllm_metrics_new_and_old_names() -> None:
    load, counters = parse_load(VLLM_NEW)
    assert load == ReplicaLoad(waiting=3, running=7, kv_cache_usage=0.42, prefix_hit_rate=None)
    assert counters == PrefixCounters(250.0, 1000.0)
    old, none = parse_load(VLLM_OLD)
    assert (old.running, old.waiting, old.kv_cache_usage, none) == (2, 0, 0.9, None)
    assert parse_load("")[0] == ReplicaLoad()  # a server without vLLM metrics


def test_prefix_hit_rate_is_over_the_last_interval_and_a_reset_gives_none() -> None:
    later = VLLM_NEW.replace("1000.0", "1400.0").replace("250.0", "550.0")
    load, _ = parse_load(later, PrefixCounters(250.0, 1000.0))
    assert load.prefix_hit_rate == pytest.approx(300 / 400)
    restarted, _ = parse_load(VLLM_NEW, PrefixCounters(5000.0, 9000.0))
    assert restarted.prefix_hit_rate is None


def test_metric_sum_takes_exactly_the_name() -> None:
    assert metric_sum(VLLM_NEW, "vllm:num_requests_running") == 7.0
    assert metric_sum(VLLM_NEW, "vllm:num_requests") is None


def test_models_and_max_model_len_from_v1_models() -> None:
    raw = b'{"object":"list","data":[{"id":"a","max_model_len":4096},{"id":"b"}]}'
    assert parse_models(raw) == (["a", "b"], 4096)
    with pytest.raises(ValueError, match="GET /v1/models"):
        parse_models(b"{}")


def reg(url: str, *, models: tuple[str, ...] = ("m",), at: float = 100.0, ttl: float = 10.0,
        load: ReplicaLoad | None = None, seqs: int | None = None) -> Registration:
    return Registration(url=url, models=list(models), updated_at=at, ttl_s=ttl,
                        load=load or ReplicaLoad(), max_num_seqs=seqs)


def test_registration_round_trips_and_lapses_after_its_ttl() -> None:
    r = reg("http://a:1", load=ReplicaLoad(waiting=1, running=2), seqs=8)
    assert decode(encode(r)) == r
    assert is_live(r, 110.0) and not is_live(r, 110.01)


def test_serving_keeps_live_entries_of_the_model() -> None:
    entries = [reg("http://a:1"), reg("http://b:1", models=("other",)),
               reg("http://c:1", at=50.0)]
    assert list(serving(entries, "m", 105.0)) == ["http://a:1"]
    assert sorted(serving(entries, None, 105.0)) == ["http://a:1", "http://b:1"]


# -- the routing rule ------------------------------------------------------------
def cand(url: str, ours: int = 0, *, waiting: int | None = None, running: int | None = None,
         kv: float | None = None, age: float = 0.0, capacity: int | None = 8,
         limit: int = 32) -> Candidate:
    load = None if waiting is None and running is None and kv is None else ReplicaLoad(
        waiting=waiting, running=running, kv_cache_usage=kv)
    return Candidate(url=url, ours=ours, limit=limit, load=load, load_age_s=age,
                     capacity=capacity)


def test_cost_is_our_outstanding_plus_the_published_queue_per_batch() -> None:
    assert cost(cand("a", 4, capacity=None, limit=8)) == 0.5  # nothing published: ours/limit
    assert cost(cand("a", 1, waiting=2, running=8)) == (1 + 2) / 8
    # a running count a scrape old is not taken (every worker would herd on it)
    assert cost(cand("a", 3, waiting=0, running=8)) == cost(cand("a", 3, waiting=0, running=0))
    assert cost(cand("a", 0, waiting=0, running=0, kv=0.95)) == 0.95
    assert cost(cand("a", 2, waiting=50, running=8, age=60.0, capacity=None, limit=4)) == 0.5


def test_choose_goes_where_the_published_queue_is_shorter_not_where_we_sent_less() -> None:
    # we sent fewer to a, but every other worker queues on it
    assert choose([cand("a", 0, waiting=6, running=8), cand("b", 2, waiting=0, running=3)]) == "b"


def test_sticky_replica_is_kept_within_the_slack_and_left_beyond_it() -> None:
    near = [cand("a", 0, waiting=0, running=8), cand("b", 0, waiting=0, running=4)]
    assert cost(near[0]) - cost(near[1]) <= STICKY_SLACK
    assert choose(near, sticky="a") == "a"
    far = [cand("a", 0, waiting=12, running=8), cand("b", 0, waiting=0, running=4)]
    assert choose(far, sticky="a") == "b"


def test_choose_avoids_tried_replicas_unless_nothing_else() -> None:
    cs = [cand("a", 0, waiting=0, running=0), cand("b", 5, waiting=3, running=8)]
    assert choose(cs, avoid={"a"}) == "b"
    assert choose(cs[:1], avoid={"a"}) == "a"
    assert choose([]) is None


def endpoint(url: str, inflight: int = 0, published: ReplicaLoad | None = None) -> Endpoint:
    ep = Endpoint(url=url, limiter=AIMDLimiter(32, 1, 64), breaker=CircuitBreaker(5, 5.0))
    ep.inflight = inflight
    ep.published, ep.capacity_hint = published, 8
    return ep


def test_select_is_least_outstanding_without_load_and_weighs_it_with() -> None:
    a, b = endpoint("http://a", 1), endpoint("http://b", 3)
    assert select([a, b], 0.0) is a
    a.published = ReplicaLoad(waiting=10, running=8)
    b.published = ReplicaLoad(waiting=0, running=3)
    assert select([a, b], 0.0) is b


# -- following the registry ---------------------------------------------------------
class FakeSource:
    def __init__(self) -> None:
        self.regs: list[Registration] = []
        self.subs: list[Callable[[], None]] = []

    def entries(self) -> list[Registration]:
        return list(self.regs)

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        self.subs.append(callback)
        return lambda: self.subs.remove(callback)


def follower(source: FakeSource, wall: list[float],
             config: LLMConfig | None = None) -> tuple[Follower, Endpoints]:
    eps = Endpoints(config or LLMConfig(), on_added=lambda ep: None, on_changed=lambda: None)
    return Follower(source, eps, model="m", clock=lambda: 0.0,
                    wall_clock=lambda: wall[0]), eps


def test_a_lapsed_entry_gets_no_traffic() -> None:
    source, wall = FakeSource(), [100.0]
    source.regs = [reg("http://a:1", at=100.0, ttl=5.0), reg("http://b:1", at=100.0, ttl=60.0)]
    f, eps = follower(source, wall)
    assert f.apply() == ["http://a:1", "http://b:1"]
    wall[0] = 106.0  # a's registrar was killed: no renewal, no delete
    assert f.apply() == ["http://b:1"]
    assert eps.urls() == ["http://b:1"]
    for _ in range(5):
        assert select(eps, 0.0) is eps.get("http://b:1")


def test_a_new_registration_is_taken_and_a_config_endpoint_is_never_dropped() -> None:
    source, wall = FakeSource(), [100.0]
    f, eps = follower(source, wall)
    eps.add("http://static:1", from_config=True)
    assert f.apply() == []
    source.regs = [reg("http://new:1", load=ReplicaLoad(waiting=0, running=1), seqs=4)]
    f.apply()
    new = eps.get("http://new:1")
    assert new is not None and new.published == ReplicaLoad(waiting=0, running=1)
    assert new.capacity_hint == 4
    source.regs = []
    f.apply()
    assert eps.urls() == ["http://static:1"]
    assert new.removed and new.published is None


UNIT = Path(__file__).resolve().parents[2] / "infra" / "vllm" / "matrix-p2p-llm-register@.service"


def test_registrar_unit_runs_beside_its_replica_and_withdraws_on_stop() -> None:
    text = UNIT.read_text(encoding="utf-8").replace("\\\n", " ")
    s = {k.strip(): v.strip() for k, _, v in
         (line.partition("=") for line in text.splitlines()
          if "=" in line and not line.lstrip().startswith("#"))}
    assert s["BindsTo"] == "vllm@%i.service" and "vllm@%i.service" in s["After"]
    assert "-m matrix_p2p llm-register" in s["ExecStart"]
    assert "$((${VLLM_BASE_PORT:-8000} + %i))" in s["ExecStart"]  # the port vllm@%i serves
    assert (s["KillSignal"], s["Restart"]) == ("SIGTERM", "on-failure")


def test_registrar_unit_verifies(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    text = UNIT.read_text(encoding="utf-8").replace("BindsTo=vllm@%i.service\n", "")
    (tmp_path / "matrix-p2p-llm-register@0.service").write_text(text, encoding="utf-8")
    r = subprocess.run([tool, "verify", "--man=no", "matrix-p2p-llm-register@0.service"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
