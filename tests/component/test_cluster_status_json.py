"""``cluster status --json`` derives holdings, lag, moving sources and dead letters
from the broker's tables and the transactional consumers' tables in PostgreSQL."""

import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from eventcomposition.consumers.partitions import CategoryPartition, partition_of
from eventcomposition.settings.variables import environment_variable
from eventcomposition.testing.postgres import ConnectionInfo
from eventcomposition.testing.processes import node_environment, run_to_completion

STATUS = [sys.executable, "-m", "eventcomposition", "cluster", "status"]

type Pool = AsyncConnectionPool[AsyncConnection[Any]]


# One category in four partitions, as the broker's tables store them.
ORDERS = [CategoryPartition("orders", n, 4).serialise() for n in range(4)]
STREAM_OF_PARTITION_0 = "o-22"  # partition_of("o-22", 4) == 0


async def test_json_shows_holdings_with_lag_moving_sources_and_dead_letters(
    postgres_database: ConnectionInfo, postgres_pool: Pool
) -> None:
    assert partition_of(STREAM_OF_PARTITION_0, 4) == 0
    now = datetime.now(UTC)
    async with postgres_pool.connection() as connection:
        # Two live subscribers and one whose heartbeat aged out long ago.
        for group, subscriber, node, seen in [
            ("totals", "sub-a", "node-a", now),
            ("totals", "sub-b", "node-b", now),
            ("totals", "sub-old", "node-gone", now - timedelta(minutes=10)),
        ]:
            await connection.execute(
                "INSERT INTO subscribers VALUES (%s, %s, %s, %s, %s)",
                [group, subscriber, node, Jsonb(ORDERS), seen],
            )
        for subscriber, node, sources in [
            ("sub-a", "node-a", ORDERS[:2]),
            ("sub-b", "node-b", ORDERS[2:3]),
            ("sub-old", "node-gone", ORDERS[3:]),
        ]:
            await connection.execute(
                "INSERT INTO subscriptions VALUES ('totals', %s, %s, %s)",
                [subscriber, node, Jsonb(sources)],
            )
        # orders#2/4 went to sub-b while sub-a has not released it yet; orders#3/4's
        # holder departed without releasing it.
        for source, node, subscriber in [
            ("orders#0/4", "node-a", "sub-a"),
            ("orders#2/4", "node-a", "sub-a"),
            ("orders#3/4", "node-gone", "sub-old"),
        ]:
            await connection.execute(
                "INSERT INTO consumer_claims VALUES "
                "('totals', %s, %s, %s, 1, now() + interval '1 minute', false, now())",
                [source, node, subscriber],
            )
        sequence = []
        for position in range(5):
            cursor = await connection.execute(
                "INSERT INTO events (id, name, stream, category, position, payload, "
                "observed_at, occurred_at) VALUES "
                "(%s, 'placed', %s, 'orders', %s, '{}', now(), now()) "
                "RETURNING sequence_number",
                [f"e-{position}", STREAM_OF_PARTITION_0, position],
            )
            row = await cursor.fetchone()
            assert row is not None
            sequence.append(row[0])
        await connection.execute(
            "INSERT INTO consumer_checkpoints VALUES ('totals', 'orders#0/4', %s, now())",
            [sequence[2]],
        )
        for group, number in [("totals", 1), ("totals", 2), ("archive", 1)]:
            await connection.execute(
                "INSERT INTO consumer_dead_letters VALUES "
                "(%s, 'orders#0/4', %s, %s, 'boom', 3, now())",
                [group, number, f"e-{number}"],
            )

    # A live window of a minute: the command may take seconds to start on a busy
    # machine, and the departed subscriber was last seen ten minutes ago.
    environment = {
        **node_environment(postgres_database),
        environment_variable(
            "broker.coordinator_subscriber_max_time_since_last_seen"
        ): "60",
    }
    completed = run_to_completion([*STATUS, "--json"], env=environment)

    assert completed.returncode == 0, completed.stderr
    document = json.loads("\n".join(completed.stdout))
    assert document["leader"] is None
    assert [(n["node_id"], n["subscribers"]) for n in document["nodes"]] == [
        ("node-a", 1),
        ("node-b", 1),
    ]
    assert all(n["last_heartbeat"] for n in document["nodes"])
    groups = {group["group"]: group for group in document["groups"]}
    assert groups["archive"]["dead_letters"] == 1
    assert groups["archive"]["holdings"] == []
    totals = groups["totals"]
    assert totals["dead_letters"] == 2
    assert sorted(s["id"] for s in totals["subscribers"]) == ["sub-a", "sub-b"]
    assert totals["holdings"] == [
        {
            "node_id": "node-a",
            "subscriber": "sub-a",
            "source": "orders#0/4",
            "checkpoint": sequence[2],
            "head": sequence[4],
            "lag": sequence[4] - sequence[2],
        },
        {
            "node_id": "node-a",
            "subscriber": "sub-a",
            "source": "orders#1/4",
            "checkpoint": None,
            "head": None,
            "lag": 0,
        },
        {
            "node_id": "node-b",
            "subscriber": "sub-b",
            "source": "orders#2/4",
            "checkpoint": None,
            "head": None,
            "lag": 0,
        },
    ]
    assert totals["moving"] == [
        {"source": "orders#2/4", "claimed_by": "node-a/sub-a", "to": "node-b/sub-b"},
        {"source": "orders#3/4", "claimed_by": "node-gone/sub-old", "to": None},
    ]
    assert document["stale"] == [
        {
            "node_id": "node-gone",
            "group": "totals",
            "subscriber": "sub-old",
            "sources": ["orders#3/4"],
        }
    ]

    tables = run_to_completion(STATUS, env=environment)
    assert tables.returncode == 0, tables.stderr
    rows = [line.split() for line in tables.stdout]
    assert ["node-a", "sub-a", "orders#0/4", str(sequence[2]), str(sequence[4])] in [
        row[:5] for row in rows
    ]
    assert ["orders#3/4", "node-gone/sub-old", "-"] in rows
    assert any("2 dead letters" in line for line in tables.stdout)
