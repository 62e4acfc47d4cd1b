"""``eventcomposition demo``: the real command, in memory and on PostgreSQL."""

import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console

from eventcomposition.broker import BrokerRole
from eventcomposition.cli.demo_report import print_report
from eventcomposition.demo import (
    CustomerTotals,
    NodeSummary,
    expected_totals,
    generate_orders,
)
from eventcomposition.demo.check import DemoResult
from eventcomposition.testing.postgres import ConnectionInfo
from eventcomposition.testing.processes import (
    CompletedNode,
    node_environment,
    run_to_completion,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SETTINGS_DIR = PROJECT_ROOT / "settings"
DEMO = [sys.executable, "-m", "eventcomposition", "demo"]
EVENTS = 300
MALFORMED = 3  # the command's default for this many events
TIMEOUT = 120.0


def run_demo(*args: str, database: ConnectionInfo | None = None) -> CompletedNode:
    return run_to_completion(
        [*DEMO, *args],
        env=node_environment(database, settings_dir=SETTINGS_DIR),
        cwd=PROJECT_ROOT,
        timeout=TIMEOUT,
    )


def table_rows(stdout: list[str]) -> dict[str, list[str]]:
    """The report's rows by node id: role, processed, malformed, partitions held."""
    rows: dict[str, list[str]] = {}
    for line in stdout:
        cells = line.split()
        if cells and cells[0].startswith(("observer-", "coordinator-")):
            rows[cells[0]] = cells[1:]
    return rows


def json_logs(stderr: list[str]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for line in stderr:
        if line.startswith("{"):
            record = json.loads(line)
            assert isinstance(record, dict)
            records.append(record)
    return records


def assert_the_demo_passed(completed: CompletedNode) -> dict[str, list[str]]:
    output = "\n".join(completed.stdout + completed.stderr)
    assert completed.returncode == 0, output
    assert any(line.startswith("check: passed") for line in completed.stdout), output
    # On PostgreSQL the node ids end with the run's id, apart from other clusters.
    rows = {
        re.sub(r"-[0-9a-f]{8}$", "", node): row
        for node, row in table_rows(completed.stdout).items()
    }
    assert set(rows) == {"observer-1", "observer-2", "coordinator-1"}, output
    observers = [rows["observer-1"], rows["observer-2"]]
    assert all(row[0] == "observer" and int(row[1]) > 0 for row in observers), output
    assert sum(int(row[1]) for row in observers) == EVENTS - MALFORMED
    assert sum(int(row[2]) for row in observers) == MALFORMED
    held = [index for row in observers for index in row[3].split(",")]
    # The one orders category in the default 16 partitions, 8 on each observer.
    assert sorted(held, key=int) == [str(index) for index in range(16)], output
    assert all(len(row[3].split(",")) == 8 for row in observers), output
    assert rows["coordinator-1"] == ["coordinator", "0", "0", "-"], output
    return rows


def assert_malformed_events_were_logged(completed: CompletedNode) -> None:
    rejected = [
        record
        for record in json_logs(completed.stderr)
        if record["event"] == "demo.order-rejected"
    ]
    assert len(rejected) == MALFORMED
    for record in rejected:
        assert record["level"] == "error"
        assert isinstance(record["position"], int)
        assert isinstance(record["sequence_number"], int)
        assert record["category"].startswith("orders")
        assert record["stream"].startswith("customer-")
        assert record["reason"].startswith("amount_cents")
        assert "payload" not in record


def test_the_demo_in_memory_spreads_the_work_and_checks_the_projection() -> None:
    completed = run_demo("--events", str(EVENTS), "--observers", "2")

    assert_the_demo_passed(completed)
    assert_malformed_events_were_logged(completed)
    assert any("storage: memory" in line for line in completed.stdout)


def test_the_demo_on_postgres_uses_the_configured_database(
    postgres_database: ConnectionInfo,
) -> None:
    completed = run_demo(
        "--events",
        str(EVENTS),
        "--observers",
        "2",
        "--storage",
        "postgres",
        database=postgres_database,
    )

    assert_the_demo_passed(completed)
    assert_malformed_events_were_logged(completed)
    assert any("storage: postgres" in line for line in completed.stdout)
    # The database outlives the run: its node ids never mix with another cluster's.
    node_ids = table_rows(completed.stdout)
    assert all(
        re.search(r"^(observer|coordinator)-\d-[0-9a-f]{8}$", n) for n in node_ids
    )
    with psycopg.connect(postgres_database.conninfo) as connection:
        rows = connection.execute(
            "SELECT id, state FROM projections WHERE name LIKE 'customer-totals-%'"
        ).fetchall()
        events = connection.execute(
            "SELECT count(*) FROM events WHERE category LIKE 'orders-%'"
        ).fetchone()
    stored = {
        row[0]: CustomerTotals(
            order_count=row[1]["order_count"],
            total_amount_cents=row[1]["total_amount_cents"],
        )
        for row in rows
    }
    assert stored == expected_totals(generate_orders(EVENTS, malformed=MALFORMED))
    assert events == (EVENTS,)


def test_bad_arguments_exit_with_status_2() -> None:
    for args in (["--events", "0"], ["--events", "2", "--malformed", "3"]):
        completed = run_demo(*args)

        assert completed.returncode == 2, completed.stderr
        assert completed.stdout == []
        assert any("error" in line for line in completed.stderr)


def test_the_module_runs_as_the_demo_command() -> None:
    completed = run_to_completion(
        [sys.executable, "-m", "eventcomposition.cli.demo", "--observers", "x"],
        env=node_environment(settings_dir=SETTINGS_DIR),
        cwd=PROJECT_ROOT,
    )

    assert completed.returncode == 2
    assert any("--observers" in line for line in completed.stderr)


def result(**changes: Any) -> DemoResult:
    orders = generate_orders(40, customers=4, malformed=1)
    fields: dict[str, Any] = {
        "orders": orders,
        "nodes": [
            NodeSummary("observer-1", BrokerRole.OBSERVER, 39, 1, ("orders-0",)),
            NodeSummary("coordinator-1", BrokerRole.COORDINATOR, 0, 0),
        ],
        "totals": expected_totals(orders),
        "elapsed_seconds": 1.5,
        "storage": "memory",
        "timed_out": False,
    }
    fields.update(changes)
    return DemoResult(**fields)


def report(demo: DemoResult) -> str:
    console = Console(record=True, width=120, file=io.StringIO())
    print_report(demo, console)
    return console.export_text()


def test_a_correct_run_passes_the_check() -> None:
    assert result().problem() is None
    assert "check: passed" in report(result())


def test_a_wrong_projection_fails_the_check() -> None:
    good = result()
    customer = next(iter(good.totals))
    wrong = dict(good.totals)
    wrong[customer] = wrong[customer].add(1)

    demo = result(totals=wrong)

    problem = demo.problem()
    assert problem is not None
    assert problem.startswith("the projection is wrong for 1 customer(s)")
    assert customer in problem
    assert f"check: FAILED: {problem}" in report(demo)


def test_unprocessed_events_fail_the_check() -> None:
    nodes = [NodeSummary("observer-1", BrokerRole.OBSERVER, 30, 1)]

    problem = result(nodes=nodes, timed_out=True).problem()

    assert problem == "30 of 39 valid events were applied within the timeout"


def test_unrejected_malformed_events_fail_the_check() -> None:
    nodes = [NodeSummary("observer-1", BrokerRole.OBSERVER, 39, 0)]

    assert result(nodes=nodes).problem() == "0 of 1 malformed events were rejected"
