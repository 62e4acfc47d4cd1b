"""``eventcomposition cluster status`` against nodes starting and stopping."""

import sys
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.consumers import source_key
from eventcomposition.demo import DemoNames
from eventcomposition.testing.postgres import ConnectionInfo
from eventcomposition.testing.processes import (
    NodeProcesses,
    node_environment,
    run_to_completion,
)
from eventcomposition.testing.waiting import wait_until

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STATUS = [sys.executable, "-m", "eventcomposition", "cluster", "status"]
STOP_TIMEOUT = 5.0
NAMES = DemoNames()

type Pool = AsyncConnectionPool[AsyncConnection[Any]]


async def allocated_sources(pool: Pool) -> int:
    async with pool.connection() as connection:
        cursor = await connection.execute(
            "SELECT coalesce(sum(jsonb_array_length(event_sources)), 0) "
            "FROM subscriptions"
        )
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def test_status_waits_for_a_starting_node_then_shows_its_work_stale_once(
    postgres_database: ConnectionInfo, postgres_pool: Pool
) -> None:
    environment = node_environment(postgres_database)
    with NodeProcesses() as nodes:
        node = nodes.run_node(
            env=environment,
            app="eventcomposition.demo:DemoContainer",
            role="full",
            node_id="status-1",
            cwd=PROJECT_ROOT,
        )
        # Started at once: the node is still importing, with no heartbeat yet.
        waited = run_to_completion([*STATUS, "--wait", "60"], env=environment)
        assert waited.returncode == 0, waited.stderr
        assert any(line.startswith("status-1 ") for line in waited.stdout)

        await wait_until(
            lambda: _all_allocated(postgres_pool),
            timeout=60,
            description="every partition of the demo category allocated",
        )
        node.terminate()
        assert await node.await_exit(STOP_TIMEOUT) == 0

    after = run_to_completion(STATUS, env=environment)

    assert after.returncode == 0, after.stderr
    report = "\n".join(after.stdout)
    assert "no live nodes" in report
    assert "no live work allocated yet" in report
    assert "stale allocations of departed nodes" in report
    for partition in NAMES.partitions():
        assert report.count(source_key(partition)) == 1, report


async def _all_allocated(pool: Pool) -> bool:
    return await allocated_sources(pool) == len(NAMES.partitions())


def test_waiting_in_vain_ends_with_status_1(
    postgres_database: ConnectionInfo,
) -> None:
    completed = run_to_completion(
        [*STATUS, "--wait", "0.5"], env=node_environment(postgres_database)
    )

    assert completed.returncode == 1
    assert "no node sent a heartbeat within 0.5s" in completed.stdout
