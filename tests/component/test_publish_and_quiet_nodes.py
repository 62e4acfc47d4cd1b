"""``eventcomposition publish`` and what a node does with its output, as processes.

Real ``eventcomposition`` processes on a real PostgreSQL database.
"""

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from logicblocks.event.projection import (
    PostgresProjectionStorageAdapter,
    ProjectionStore,
)
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.demo import (
    DemoNames,
    expected_totals,
    generate_orders,
    read_totals,
)
from eventcomposition.testing.postgres import ConnectionInfo
from eventcomposition.testing.processes import (
    NodeProcesses,
    node_environment,
    run_to_completion,
)
from eventcomposition.testing.waiting import wait_until

PROJECT_ROOT = Path(__file__).resolve().parents[2]
APP = "eventcomposition.demo:DemoContainer"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 5.0  # consumers.stop_timeout of the test profile
CALM_TIMINGS = {
    "consumers.poll_interval": 1,
    "broker.subscriber_manager_heartbeat_interval": 1,
    "broker.coordinator_subscriber_max_time_since_last_seen": 5,
    "broker.coordinator_distribution_interval": 1,
    "broker.coordinator_leadership_attempt_interval": 1,
    "broker.observer_synchronisation_interval": 1,
}
PUBLISH = [sys.executable, "-m", "eventcomposition", "publish"]

type Pool = AsyncConnectionPool[AsyncConnection[Any]]


async def event_count(pool: Pool) -> int:
    async with pool.connection() as connection:
        row = await (await connection.execute("SELECT count(*) FROM events")).fetchone()
    return int(row[0]) if row else 0


def line(category: str, stream: str, name: str, payload: object) -> str:
    return json.dumps(
        {"category": category, "stream": stream, "name": name, "payload": payload}
    )


async def test_a_file_with_a_bad_line_publishes_nothing_and_names_the_line(
    postgres_database: ConnectionInfo, postgres_pool: Pool, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(
        "\n".join(
            [
                line("orders", "c-1", "order-placed", {"amount_cents": 100}),
                line("orders", "c-2", "order-placed", {"amount_cents": 200}),
                '{"category": "orders", "stream": "c-3", "name": "order-placed"}',
                line("orders", "c-4", "order-placed", {"amount_cents": 400}),
            ]
        )
        + "\n"
    )

    completed = run_to_completion(
        [*PUBLISH, "--file", str(events)], env=node_environment(postgres_database)
    )

    assert completed.returncode == 1
    assert completed.stderr == [
        f"eventcomposition: error: {events} line 3: missing payload (an event has "
        "exactly category, stream, name, payload); nothing was published"
    ]
    assert await event_count(postgres_pool) == 0


async def test_events_from_standard_input_are_published_with_their_positions(
    postgres_database: ConnectionInfo, postgres_pool: Pool
) -> None:
    text = "\n".join(
        [
            line("orders", "c-1", "order-placed", {"amount_cents": 100}),
            "",
            line("orders", "c-1", "order-shipped", {}),
            line("invoices", "i-9", "invoice-sent", {"total": 3}),
        ]
    )

    completed = run_to_completion(
        [*PUBLISH, "--file", "-"], env=node_environment(postgres_database), input=text
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout[0] == "published 3 events in 2 writes, one per category"
    assert [entry.split(" (")[0] for entry in completed.stdout[1:]] == [
        "  orders/c-1 position 0",
        "  orders/c-1 position 1",
        "  invoices/i-9 position 0",
    ]
    async with postgres_pool.connection() as connection:
        rows = await (
            await connection.execute(
                "SELECT category, stream, name, position, payload FROM events "
                "ORDER BY sequence_number"
            )
        ).fetchall()
    assert rows == [
        ("orders", "c-1", "order-placed", 0, {"amount_cents": 100}),
        ("orders", "c-1", "order-shipped", 1, {}),
        ("invoices", "i-9", "invoice-sent", 0, {"total": 3}),
    ]


async def test_one_event_from_options(
    postgres_database: ConnectionInfo, postgres_pool: Pool
) -> None:
    completed = run_to_completion(
        [
            *PUBLISH,
            "--category",
            "orders",
            "--stream",
            "c-1",
            "--name",
            "order-placed",
            "--payload",
            '{"amount_cents": 5}',
        ],
        env=node_environment(postgres_database),
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout[0] == "published 1 event"
    assert await event_count(postgres_pool) == 1


async def test_a_running_node_projects_published_orders_with_a_quiet_info_log(
    postgres_database: ConnectionInfo, postgres_pool: Pool
) -> None:
    orders = 1_000
    environment = node_environment(postgres_database, log_level="INFO")
    with NodeProcesses() as nodes:
        node = nodes.run_node(
            env=environment, app=APP, role="full", node_id="full-1", cwd=PROJECT_ROOT
        )
        await node.await_log("node.running", START_TIMEOUT)

        completed = run_to_completion(
            [*PUBLISH, "--demo-orders", str(orders)], env=environment
        )
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout == ["published 1000 orders in category orders"]

        store = ProjectionStore(
            adapter=PostgresProjectionStorageAdapter(connection_source=postgres_pool)
        )
        expected = expected_totals(generate_orders(orders))
        names = DemoNames()

        async def projected() -> bool:
            return await read_totals(store, names.projection_name) == expected

        await wait_until(projected, timeout=120, description="the projected totals")
        node.terminate()
        assert await node.await_exit(STOP_TIMEOUT) == 0

    info_lines = [record for record in node.records if record.get("level") == "info"]
    assert len(info_lines) < 50, "\n".join(
        str(record.get("event")) for record in info_lines
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_node_with_closed_output_stays_idle_and_stops_on_a_signal(
    postgres_database: ConnectionInfo, postgres_pool: Pool, signum: signal.Signals
) -> None:
    # DEBUG: the node writes lines every second, every one of them failing.
    # One-second intervals: an idle node then uses about 2% of a core here, where
    # the test profile's fast timings alone take about 10%.
    environment = node_environment(
        postgres_database, log_level="DEBUG", settings=CALM_TIMINGS
    )
    with NodeProcesses() as nodes:
        node = nodes.run_node(
            env=environment,
            app=APP,
            role="full",
            node_id="closed-output-1",
            cwd=PROJECT_ROOT,
            output_closed=True,
        )

        async def heartbeating() -> bool:
            async with postgres_pool.connection() as connection:
                cursor = await connection.execute(
                    "SELECT 1 FROM subscribers WHERE node_id = 'closed-output-1'"
                )
                return await cursor.fetchone() is not None

        await wait_until(heartbeating, timeout=START_TIMEOUT, description="a heartbeat")
        cpu_before, wall_before = node.cpu_seconds(), time.monotonic()
        await wait_until(
            lambda: time.monotonic() - wall_before >= 3,
            timeout=10,
            description="three seconds of running",
        )
        cpu_used = node.cpu_seconds() - cpu_before
        wall = time.monotonic() - wall_before
        assert node.running
        assert cpu_used / wall < 0.05, f"{cpu_used:.2f}s of CPU in {wall:.2f}s"

        node.send_signal(signum)
        assert await node.await_exit(STOP_TIMEOUT) == 0
