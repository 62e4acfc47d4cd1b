"""The cluster status report: live work apart from what departed nodes left."""

from datetime import UTC, datetime, timedelta

from eventcomposition.cli.cluster import render_status

LIVE_WITHIN = timedelta(seconds=3)
ORDERS_0 = [{"type": "category", "category": "orders-0"}]
ORDERS_1 = [{"type": "category", "category": "orders-1"}]
ORDERS_2 = [{"type": "category", "category": "orders-2"}]


def test_allocations_of_departed_nodes_show_once_as_stale() -> None:
    now = datetime.now(UTC)  # the report compares with the time it is made
    live, departed = now - timedelta(seconds=1), now - timedelta(minutes=5)
    nodes = [("node-a", live, 1), ("node-b", departed, 1)]
    subscriptions = [
        ("totals", "sub-a", "node-a", ORDERS_0, "node-a", live),
        ("totals", "sub-b", "node-a", ORDERS_1, "node-b", departed),
        ("totals", "sub-c", "node-a", ORDERS_2, None, None),
    ]

    report = render_status(
        "db", nodes, subscriptions, None, live_within=LIVE_WITHIN
    ).splitlines()

    split = _stale_index(report)
    live_part, stale_part = report[:split], report[split:]
    assert any(line.startswith("node-a ") for line in live_part)
    assert not any("node-b" in line for line in live_part)
    assert [line for line in live_part if "totals/" in line] == [
        "node-a  totals/sub-a: orders-0"
    ]
    assert [line for line in stale_part if "totals/" in line] == [
        "node-b          totals/sub-b: orders-1",
        "(unregistered)  totals/sub-c: orders-2",
    ]


def test_no_live_node_says_that_starting_nodes_show_after_a_heartbeat() -> None:
    report = render_status("db", [], [], None, live_within=LIVE_WITHIN)

    assert "nodes that are still starting show after their first heartbeat" in report
    assert "--wait SECONDS" in report
    assert "no live work allocated yet" in report
    assert "stale" not in report


def test_after_waiting_in_vain_it_says_how_long() -> None:
    report = render_status("db", [], [], None, live_within=LIVE_WITHIN, waited=2.5)

    assert "no node sent a heartbeat within 2.5s" in report


def _stale_index(lines: list[str]) -> int:
    return next(
        index
        for index, line in enumerate(lines)
        if line.startswith("stale allocations")
    )
