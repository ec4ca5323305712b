"""The Grafana dashboard queries exactly the metrics a process exports; the Prometheus config parses.

The live check (a worker and a sink scraped after a run:
``tests/integration/test_ops_live.py``) uses ``queried_names`` on the same
dashboard; here the text comes from a ``Metrics`` that recorded one of everything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from matrix_p2p.metrics import OUTCOMES, Metrics, exported_names, queried_names

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "infra" / "grafana" / "matrix_p2p.json"
PROMETHEUS = ROOT / "infra" / "prometheus" / "prometheus.yml"


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def one_of_everything() -> Metrics:
    m = Metrics()
    rm = m.role("judge")
    for outcome in OUTCOMES:
        rm.hop_started()
        rm.hop_done(0.1, outcome)
    rm.tokens(10, 2)
    ep = m.llm("http://127.0.0.1:8000/v1")
    ep.request_done(0.5, 200)
    ep.set_limit(32)
    m.task_finished("done")
    m.dead_lettered("sink")
    m.sink_rows_written()
    m.tasks_submitted()
    m.set_consumer("judge", 3, 1)
    m.liveness_healed("judge", "rerun")
    return m


def test_every_queried_metric_is_exported_and_every_exported_one_is_shown() -> None:
    queried = queried_names(load_dashboard())
    exported = exported_names(one_of_everything().render().decode())
    assert queried <= exported, f"the dashboard queries names nobody exports: {queried - exported}"
    # a new metric gets a panel, or it is invisible to whoever runs the fleet
    assert exported <= queried, f"exported but not on the dashboard: {exported - queried}"
    assert "matrix_p2p_hop_seconds" in queried and "matrix_p2p_hops_total" in queried


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_dashboard_model_is_well_formed() -> None:
    d = load_dashboard()
    assert d["uid"] == "matrix-p2p" and d["schemaVersion"] >= 36
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ps = panels(d)
    assert len({p["id"] for p in ps}) == len(ps), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in ps:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        # every query goes to the chosen data source, none to a fixed one
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and p["description"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            assert "matrix_p2p_" in t["expr"]
            # rates over Grafana's interval, so a zoomed-out range still has two samples per window
            if "rate(" in t["expr"]:
                assert "[$__rate_interval]" in t["expr"], t["expr"]


def test_names_helpers() -> None:
    dashboard = {
        "panels": [
            {"type": "row", "panels": [
                {"targets": [{"expr": "histogram_quantile(0.9, sum by (le) "
                                      "(rate(matrix_p2p_hop_seconds_bucket[5m])))"}]}]},
            {"targets": [{"expr": "sum(rate(matrix_p2p_hops_total[1m])) / "
                                  "sum(matrix_p2p_hop_seconds_count)"}, {"refId": "B"}]},
        ],
        "templating": {"list": [
            {"type": "query", "query": {"query": "label_values(matrix_p2p_tasks_inflight, role)"}},
            {"type": "query", "query": "label_values(matrix_p2p_llm_endpoint_limit, endpoint)"},
            {"type": "custom", "query": "matrix_p2p_not_a_query"},
        ]},
    }
    assert queried_names(dashboard) == {"matrix_p2p_hop_seconds", "matrix_p2p_hops_total",
                                        "matrix_p2p_tasks_inflight", "matrix_p2p_llm_endpoint_limit"}
    text = (
        "# TYPE matrix_p2p_hops_total counter\n"
        'matrix_p2p_hops_total{role="a",outcome="done"} 1\n'
        "# TYPE matrix_p2p_hop_seconds histogram\n"
        'matrix_p2p_hop_seconds_bucket{role="a",le="+Inf"} 1\n'
        'matrix_p2p_hop_seconds_sum{role="a"} 0.1\n'
        'matrix_p2p_hop_seconds_count{role="a"} 1\n'
        'matrix_p2p_hop_seconds_created{role="a"} 1.7e9\n'
        "# TYPE matrix_p2p_llm_requests counter\n"  # a family with no sample yet is not exported
        "# TYPE process_cpu_seconds_total counter\n"
        "process_cpu_seconds_total 3\n"
    )
    assert exported_names(text) == {"matrix_p2p_hops_total", "matrix_p2p_hop_seconds"}


def test_prometheus_config_scrapes_every_process_kind() -> None:
    conf = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    jobs = {j["job_name"]: j for j in conf["scrape_configs"]}
    assert {"matrix_p2p_worker", "matrix_p2p_sink", "matrix_p2p_source",
            "matrix_p2p_file_sd"} <= set(jobs)
    for name, job in jobs.items():
        assert job.get("static_configs") or job.get("file_sd_configs"), name
        for sc in job.get("static_configs", []):
            assert all(":" in t for t in sc["targets"]), name
            # a target label named like a metric label would be renamed exported_<label>
            assert not {"role", "endpoint", "consumer", "status"} & set(sc.get("labels", {})), name
    example = ROOT / "infra" / "prometheus" / "targets" / "matrix_p2p.json.example"
    groups = json.loads(example.read_text(encoding="utf-8"))
    assert all(g["targets"] for g in groups)
