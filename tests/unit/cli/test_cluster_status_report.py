"""The cluster status report: tables and the JSON document from one status."""

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from eventcomposition.cli.cluster_report import (
    ClusterStatus,
    GroupStatus,
    HoldingStatus,
    MovingStatus,
    NodeStatus,
    StaleAllocation,
    SubscriberStatus,
    render_status,
    status_document,
    status_json,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SEEN = NOW - timedelta(seconds=1.5)


def a_status() -> ClusterStatus:
    return ClusterStatus(
        where="db",
        at=NOW,
        nodes=[
            NodeStatus("node-a", "observer or full", SEEN, 1),
            NodeStatus("lead-[1]", "coordinator, leading", None, 0),
        ],
        leader="lead-[1]",
        groups=[
            GroupStatus(
                name="totals",
                subscribers=[SubscriberStatus("sub-a", "node-a", SEEN, 3)],
                holdings=[
                    HoldingStatus("node-a", "sub-a", "orders-0", 41, 44, 3),
                    HoldingStatus("node-a", "sub-a", "orders-1", None, None, 0),
                ],
                moving=[MovingStatus("orders-2", "node-b/sub-b", None)],
                dead_letters=2,
            )
        ],
        stale=[
            StaleAllocation("node-b", "totals", "sub-b", ["orders-3"]),
            StaleAllocation(None, "totals", "sub-c", ["orders-4", "orders-5"]),
        ],
    )


def test_each_holding_shows_its_checkpoint_head_and_lag() -> None:
    lines = render_status(a_status()).splitlines()

    assert "group totals: 1 live subscribers, 2 sources held by 1, 1 moving, " in (
        "\n".join(lines)
    )
    assert _cells(lines, "orders-0") == ["node-a", "sub-a", "orders-0", "41", "44", "3"]
    assert _cells(lines, "orders-1") == ["node-a", "sub-a", "orders-1", "-", "-", "0"]
    assert _cells(lines, "orders-2") == ["orders-2", "node-b/sub-b", "-"]
    assert "2 dead letters" in "\n".join(lines)


def test_with_rates_each_holding_shows_its_events_per_second_or_a_dash() -> None:
    status = a_status()
    [group] = status.groups
    holdings = [replace(group.holdings[0], events_per_second=12.345), group.holdings[1]]
    status = replace(status, groups=[replace(group, holdings=holdings)])

    lines = render_status(status, rates=True).splitlines()
    plain = render_status(status).splitlines()

    assert any(line.split()[-1:] == ["events/s"] for line in lines)
    assert _cells(lines, "orders-0")[-1] == "12.3"
    assert _cells(lines, "orders-1")[-1] == "-"
    assert "events/s" not in "\n".join(plain)
    # The group's rate only when every holding's is known.
    assert "dead letters, " not in "\n".join(lines)
    known = [replace(holding, events_per_second=2.5) for holding in holdings]
    status = replace(status, groups=[replace(group, holdings=known)])
    assert "2 dead letters, 5.0 events/s" in render_status(status, rates=True)
    assert _cells(plain, "orders-0")[-1] == "3"


def test_nodes_show_role_and_heartbeat_and_the_leader_by_name() -> None:
    lines = render_status(a_status()).splitlines()

    assert _cells(lines, "node-a")[:5] == ["node-a", "observer", "or", "full", "1.5s"]
    # Node ids are plain text, never rich markup.
    assert any(line.startswith("lead-[1] ") for line in lines)
    assert "leading coordinator: lead-[1]" in lines


def test_allocations_of_departed_nodes_show_once_as_stale() -> None:
    report = render_status(a_status())

    stale_part = report[report.index("stale allocations of departed nodes") :]
    lines = stale_part.splitlines()
    assert _cells(lines, "node-b") == ["node-b", "totals/sub-b:", "orders-3"]
    assert _cells(lines, "(unregistered)") == [
        "(unregistered)",
        "totals/sub-c:",
        "orders-4,",
        "orders-5",
    ]
    for source in ("orders-3", "orders-4", "orders-5"):
        assert report.count(source) == 1


def test_no_live_node_says_that_starting_nodes_show_after_a_heartbeat() -> None:
    report = render_status(ClusterStatus("db", NOW, [], None, [], []))

    assert "nodes that are still starting show after their first heartbeat" in report
    assert "--wait SECONDS" in report
    assert "leading coordinator: none" in report
    assert "no live work allocated yet" in report
    assert "stale" not in report


def test_after_waiting_in_vain_it_says_how_long() -> None:
    report = render_status(ClusterStatus("db", NOW, [], None, [], []), waited=2.5)

    assert "no node sent a heartbeat within 2.5s" in report


def test_the_json_document_holds_the_same() -> None:
    document = json.loads(status_json(a_status()))

    assert document == status_document(a_status())
    assert document["leader"] == "lead-[1]"
    assert document["nodes"][1] == {
        "node_id": "lead-[1]",
        "role": "coordinator, leading",
        "last_heartbeat": None,
        "subscribers": 0,
    }
    [group] = document["groups"]
    assert group["subscribers"] == [
        {
            "id": "sub-a",
            "node_id": "node-a",
            "last_heartbeat": SEEN.isoformat(),
            "requests": 3,
        }
    ]
    assert group["holdings"][0] == {
        "node_id": "node-a",
        "subscriber": "sub-a",
        "source": "orders-0",
        "checkpoint": 41,
        "head": 44,
        "lag": 3,
    }
    assert group["moving"] == [
        {"source": "orders-2", "claimed_by": "node-b/sub-b", "to": None}
    ]
    assert group["dead_letters"] == 2
    assert [stale["subscriber"] for stale in document["stale"]] == ["sub-b", "sub-c"]


def _cells(lines: list[str], first: str) -> list[str]:
    return next(
        line.split() for line in lines if first in line.split()[:3] if line.split()
    )
