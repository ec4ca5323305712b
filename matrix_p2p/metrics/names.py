"""Which metric names a Grafana dashboard queries, and which a scrape exports. Pure.

The dashboard test checks the first against the second: today against a
``Metrics`` that recorded one of everything, later against a live worker's
scraped ``/metrics`` text (the same two functions).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

METRIC_RE = re.compile(r"\bmatrix_p2p_[a-z_]+")
# a histogram is queried by its series and exported as family + suffix
_SERIES_SUFFIXES = ("_bucket", "_sum", "_count")


def base_name(series: str) -> str:
    """``matrix_p2p_hop_seconds_bucket`` -> ``matrix_p2p_hop_seconds``; counters keep ``_total``."""
    for suffix in _SERIES_SUFFIXES:
        if series.endswith(suffix):
            return series[: -len(suffix)]
    return series


def dashboard_exprs(dashboard: Mapping[str, Any]) -> Iterator[str]:
    """Every PromQL text in a Grafana JSON model: panel targets (rows' nested
    panels included) and query variables."""
    def panels(items: list[Any]) -> Iterator[Mapping[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield str(target["expr"])
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, Mapping):
            query = query.get("query")
        if isinstance(query, str) and var.get("type") == "query":
            yield query


def queried_names(dashboard: Mapping[str, Any]) -> set[str]:
    """The metric names (families, ``_total`` kept) the dashboard's queries name."""
    return {base_name(m) for expr in dashboard_exprs(dashboard) for m in METRIC_RE.findall(expr)}


def exported_names(exposition: str) -> set[str]:
    """The metric names with at least one sample in a ``/metrics`` text."""
    return {
        base_name(sample.name)
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        # ``_created`` holds a family's start time, not a series anyone queries
        if sample.name.startswith("matrix_p2p_") and not sample.name.endswith("_created")
    }
