"""The Grafana dashboard of a cluster's nodes, built from plain data.

``python -m eventcomposition.dashboards.grafana`` writes ``eventcomposition.json``
beside this module (``--check`` only says whether it is up to date). Every query
names the metrics of ``eventcomposition.metrics`` by their exported names; a test
compares them with what a real registry exports.

Prometheus adds ``instance`` (the node's scrape address) and ``job`` to every
series; a node adds ``group`` and ``source`` where they apply.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..metrics import PREFIX

type Json = dict[str, Any]

UID = "eventcomposition-cluster"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's grid is 24 units wide.
WIDTH = 24
# Queries restricted to the groups chosen in the dashboard's "group" variable.
GROUPS = 'group=~"$group"'


def metric(name: str) -> str:
    """An exported series name: ``metric("events_processed_total")``."""
    return f"{PREFIX}_{name}"


def target(expression: str, legend: str) -> Json:
    """A PromQL query and the legend of its series (a panel numbers them)."""
    return {"datasource": DATASOURCE, "expr": expression, "legendFormat": legend}


def panel(
    title: str,
    description: str,
    targets: list[Json],
    *,
    unit: str,
    kind: str = "timeseries",
    width: int = 12,
    height: int = 8,
    **options: Any,
) -> Json:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [
            {**t, "refId": chr(ord("A") + index)} for index, t in enumerate(targets)
        ],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": options,
        "gridPos": {"w": width, "h": height},
    }


def row(title: str) -> Json:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def _panels() -> list[Json]:
    processed = metric("events_processed_total")
    lag = metric("consumer_lag_events")
    buckets = metric("batch_duration_seconds_bucket")
    return [
        row("Work"),
        panel(
            "Lag per source",
            "How far each held source's checkpoint is behind its head, in sequence "
            "numbers (0 exactly when caught up). The highest report wins while a "
            "source moves between nodes.",
            [
                target(
                    f"max by (group, source) ({lag}{{{GROUPS}}})",
                    "{{group}} {{source}}",
                )
            ],
            unit="short",
        ),
        panel(
            "Throughput",
            "Events processed per second, per group and node: committed with their "
            "batch (transactional consumers) or returned from the processor "
            "(per-event consumers).",
            [
                target(
                    f"sum by (group, instance) (rate({processed}{{{GROUPS}}}"
                    "[$__rate_interval]))",
                    "{{group}} on {{instance}}",
                ),
                target(
                    f"sum (rate({processed}{{{GROUPS}}}[$__rate_interval]))",
                    "cluster",
                ),
            ],
            unit="ops",
        ),
        panel(
            "Batch duration",
            "Time to process and commit one batch of a transactional consumer, "
            "quantiles over every node.",
            [
                target(
                    f"histogram_quantile({quantile}, sum by (le) "
                    f"(rate({buckets}[$__rate_interval])))",
                    f"p{round(quantile * 100)}",
                )
                for quantile in (0.5, 0.95, 0.99)
            ],
            unit="s",
        ),
        panel(
            "Event duration",
            "Time for one event through a per-event consumer's processor, "
            "quantiles over every node.",
            [
                target(
                    f"histogram_quantile({quantile}, sum by (le) "
                    f"(rate({metric('event_duration_seconds_bucket')}"
                    "[$__rate_interval])))",
                    f"p{round(quantile * 100)}",
                )
                for quantile in (0.5, 0.95, 0.99)
            ],
            unit="s",
        ),
        panel(
            "Average batch duration",
            "Mean time to process one batch, per node.",
            [
                target(
                    f"sum by (instance) (rate({metric('batch_duration_seconds_sum')}"
                    "[$__rate_interval])) / sum by (instance) "
                    f"(rate({metric('batch_duration_seconds_count')}"
                    "[$__rate_interval]))",
                    "{{instance}}",
                )
            ],
            unit="s",
        ),
        row("Failures"),
        panel(
            "Consumer errors",
            "Failed attempts to process a source (the batch was not committed and "
            "is retried), per group and source.",
            [
                target(
                    f"sum by (group, source) (increase("
                    f"{metric('consumer_errors_total')}{{{GROUPS}}}[$__rate_interval]))",
                    "{{group}} {{source}}",
                )
            ],
            unit="short",
        ),
        panel(
            "Dead letters",
            "Events parked as dead letters, per group. `eventcomposition "
            "dead-letters list` shows them; `retry` puts them back.",
            [
                target(
                    f"sum by (group) (increase({metric('dead_letters_total')}"
                    f"{{{GROUPS}}}[$__rate_interval]))",
                    "{{group}}",
                )
            ],
            unit="short",
        ),
        row("Cluster"),
        panel(
            "Leading coordinator",
            "1 on the node whose coordinator leads the cluster. Exactly one node "
            "should show 1.",
            [
                target(
                    f"max by (instance) ({metric('coordinator_leader')})",
                    "{{instance}}",
                )
            ],
            unit="short",
            kind="stat",
            width=8,
            colorMode="background",
            graphMode="none",
            textMode="value_and_name",
            reduceOptions={"calcs": ["lastNotNull"], "fields": "", "values": False},
        ),
        panel(
            "Sources held",
            "Sources each node holds, per group: a node holding none is idle.",
            [
                target(
                    f"sum by (instance, group) ({metric('sources_held')}{{{GROUPS}}})",
                    "{{instance}} {{group}}",
                )
            ],
            unit="short",
            width=8,
        ),
        panel(
            "Allocation changes",
            "Sources the leading coordinator allocated anew: steady outside "
            "nodes joining or leaving.",
            [
                target(
                    f"sum by (instance) (increase({metric('allocation_changes_total')}"
                    "[$__rate_interval]))",
                    "{{instance}}",
                )
            ],
            unit="short",
            width=8,
        ),
    ]


def _laid_out(panels: list[Json]) -> list[Json]:
    """Each panel with an id and a place: left to right, then the next line."""
    laid_out = []
    x = y = line_height = 0
    for number, item in enumerate(panels, start=1):
        if item["type"] == "row":
            y += line_height
            x, line_height = 0, 0
            place = {"x": 0, "y": y, "w": WIDTH, "h": 1}
            y += 1
        else:
            width, height = item["gridPos"]["w"], item["gridPos"]["h"]
            if x + width > WIDTH:
                x, y, line_height = 0, y + line_height, 0
            place = {"x": x, "y": y, "w": width, "h": height}
            x += width
            line_height = max(line_height, height)
        laid_out.append({**item, "id": number, "gridPos": place})
    return laid_out


def build_dashboard() -> Json:
    """The dashboard as Grafana's JSON model."""
    return {
        "uid": UID,
        "title": "eventcomposition cluster",
        "description": "Lag, throughput, batch durations, failures and the "
        "coordinator of eventcomposition nodes, from their /metrics.",
        "tags": ["eventcomposition"],
        "editable": True,
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "timezone": "utc",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                },
                {
                    "name": "group",
                    "label": "Subscriber group",
                    "type": "query",
                    "datasource": DATASOURCE,
                    # The plain-string form, which every Grafana version reads.
                    "query": f"label_values({metric('sources_held')}, group)",
                    "definition": f"label_values({metric('sources_held')}, group)",
                    "refresh": 2,
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                },
            ]
        },
        "annotations": {"list": []},
        "panels": _laid_out(_panels()),
    }


def dashboard_text() -> str:
    """The dashboard as the JSON text shipped in the package."""
    return json.dumps(build_dashboard(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eventcomposition.dashboards.grafana",
        description="Write the Grafana dashboard beside this module.",
    )
    parser.add_argument(
        "--check", action="store_true", help="only say whether it is up to date"
    )
    args = parser.parse_args(argv)
    path = Path(__file__).with_name("eventcomposition.json")
    text = dashboard_text()
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            print(f"{path} is out of date: run `just dashboard`", file=sys.stderr)
            return 1
        return 0
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
