"""The shipped Grafana dashboard: up to date, and asking only for metrics a node
exports."""

import json
import re
from collections.abc import Iterator
from typing import Any

from eventcomposition.dashboards import grafana_dashboard_json
from eventcomposition.dashboards.grafana import build_dashboard, dashboard_text, main
from eventcomposition.metrics import PREFIX, PrometheusNodeMetrics

# The series a metric family of each type exports (prometheus-client's text format).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}
# Labels a query may use: the node's own, and those Prometheus adds when scraping.
KNOWN_LABELS = {"group", "source", "le", "instance", "job"}


def exported_series() -> set[str]:
    """Every series name a node's registry exports, read from a real registry."""
    registry = PrometheusNodeMetrics().registry
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in SUFFIXES[family.type]
    }


def queries(dashboard: dict[str, Any]) -> Iterator[str]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield variable["query"]


def test_the_shipped_json_is_what_the_generator_writes() -> None:
    assert grafana_dashboard_json() == dashboard_text()
    assert main(["--check"]) == 0


def test_every_metric_a_query_names_is_exported_by_the_node() -> None:
    exported = exported_series()
    used = {
        name
        for query in queries(build_dashboard())
        for name in re.findall(rf"\b{PREFIX}_[a-z_]+", query)
    }

    assert used, "the dashboard queries no metric"
    assert used <= exported, f"not exported: {sorted(used - exported)}"


def test_queries_group_and_filter_by_labels_the_series_have() -> None:
    for query in queries(build_dashboard()):
        grouped = re.findall(r"\bby \(([^)]*)\)", query)
        filtered = re.findall(r"[{,]\s*([a-z_]+)\s*=~?", query)
        labels = {label.strip() for by in grouped for label in by.split(",")}
        labels |= set(filtered)
        assert labels <= KNOWN_LABELS, query
        assert query.count("(") == query.count(")"), query


def test_it_shows_what_an_operator_watches() -> None:
    dashboard = json.loads(grafana_dashboard_json())
    titles = {panel["title"] for panel in dashboard["panels"]}

    assert {
        "Lag per source",
        "Throughput",
        "Batch duration",
        "Event duration",
        "Consumer errors",
        "Dead letters",
        "Leading coordinator",
        "Sources held",
    } <= titles
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        place = panel["gridPos"]
        assert place["x"] + place["w"] <= 24, panel["title"]
