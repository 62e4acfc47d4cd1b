"""One category in partitions over real processes, with a kill, a join and a
doubling of the partition count, while events are published throughout.

The application (``tests/component/apps/plain_insert.py``) inserts one row per
event, with no idempotency, into a table whose ``row_id`` records the order of the
inserts. 200 streams of the one ``plain`` category are read in 16 partitions by
three observers (5 or 6 each); one is SIGKILLed and one joins; then the count is
doubled by a rolling deploy: an observer with ``consumers.partitions = 32``
starts and the 16-partition ones stop. Every event must be applied exactly once and
each stream's events in their order.
"""

import asyncio
from pathlib import Path
from typing import Any

import pytest
from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.types import NewEvent
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.consumers import source_key
from eventcomposition.consumers.partitions import source_identifier
from eventcomposition.testing import ConnectionInfo
from eventcomposition.testing.processes import (
    NodeProcess,
    NodeProcesses,
    node_environment,
)
from eventcomposition.testing.waiting import wait_until

pytestmark = pytest.mark.usefixtures("quiet_test_process_logs")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SETTINGS_DIR = PROJECT_ROOT / "settings"
APP = "tests.component.apps.plain_insert:PlainInsertApp"
GROUP = "plain-insert"
CATEGORY = "plain"
STREAMS = [f"stream-{n:03d}" for n in range(200)]
ROUNDS = 4  # events per stream while the cluster changes
BATCH_STARTED = "plain.batch-started"
START_TIMEOUT = 60.0
PROCESSING_TIMEOUT = 60.0
STOP_TIMEOUT = 5.0

HELD_SOURCES = """
    SELECT r.node_id, s.event_sources
    FROM subscriptions s JOIN subscribers r USING ("group", id)
    WHERE s."group" = %s
"""

type Pool = AsyncConnectionPool[AsyncConnection[Any]]


async def fetch(pool: Pool, query: str, *params: object) -> list[tuple[Any, ...]]:
    async with pool.connection() as connection:
        cursor = await connection.execute(query, params)
        return list(await cursor.fetchall())


async def holdings(pool: Pool) -> dict[str, set[str]]:
    held: dict[str, set[str]] = {}
    for node_id, sources in await fetch(pool, HELD_SOURCES, GROUP):
        keys = {source_key(source_identifier(source)) for source in sources}
        if keys:
            held.setdefault(str(node_id), set()).update(keys)
    return held


async def publish_rounds(store: EventStore, rounds: range, pause: float) -> None:
    """One event per stream per round, the streams in small batches."""
    for number in rounds:
        for first in range(0, len(STREAMS), 20):
            for stream in STREAMS[first : first + 20]:
                await store.stream(category=CATEGORY, stream=stream).publish(
                    events=[NewEvent(name="happened", payload={"round": number})]
                )
            await asyncio.sleep(pause)


class Cluster:
    def __init__(
        self, nodes: NodeProcesses, database: ConnectionInfo, pool: Pool
    ) -> None:
        self.nodes = nodes
        self.database = database
        self.pool = pool

    def start(
        self, node_id: str, role: str = "observer", count: int = 16
    ) -> NodeProcess:
        environment = node_environment(
            self.database,
            settings_dir=SETTINGS_DIR,
            settings={"consumers.batch_size": 50, "consumers.partitions": count},
        )
        return self.nodes.run_node(
            env=environment,
            app=APP,
            role=role,
            node_id=node_id,
            migrate=True,
            cwd=PROJECT_ROOT,
        )

    async def wait_holdings(
        self, expected_nodes: set[str], count: int, description: str
    ) -> dict[str, set[str]]:
        keys = {f"{CATEGORY}#{index}/{count}" for index in range(count)}
        held: dict[str, set[str]] = {}

        async def settled() -> bool:
            nonlocal held
            held = await holdings(self.pool)
            return (
                set(held) == expected_nodes
                and set().union(*held.values()) == keys
                and sum(map(len, held.values())) == count
            )

        try:
            await wait_until(settled, timeout=START_TIMEOUT, description=description)
        except AssertionError as error:
            raise AssertionError(f"{error}; holdings: {held}") from None
        return held


async def test_partitions_over_processes_kill_join_and_doubling(
    nodes: NodeProcesses, postgres_database: ConnectionInfo, postgres_pool: Pool
) -> None:
    cluster = Cluster(nodes, postgres_database, postgres_pool)
    observers = [cluster.start(f"observer-{n}") for n in (1, 2, 3)]
    for observer in observers:
        await observer.await_log("node.running", START_TIMEOUT)
    cluster.start("coordinator-1", role="coordinator")
    held = await cluster.wait_holdings(
        {"observer-1", "observer-2", "observer-3"}, 16, "16 partitions over three"
    )
    assert sorted(map(len, held.values())) == [5, 5, 6]

    store = EventStore(
        adapter=PostgresEventStorageAdapter(connection_source=postgres_pool)
    )
    publishing = asyncio.create_task(publish_rounds(store, range(ROUNDS), 0.05))

    # A kill mid-batch, and a node joining.
    victim = observers[0]
    await victim.await_log(BATCH_STARTED, PROCESSING_TIMEOUT, after=victim.mark())
    victim.kill()
    assert await victim.await_exit(10) == -9
    joining = cluster.start("observer-4")
    await cluster.wait_holdings(
        {"observer-2", "observer-3", "observer-4"}, 16, "16 partitions, after the join"
    )

    # Doubling by a rolling deploy: a node with 32 partitions, then the old stop.
    doubled = cluster.start("observer-5", count=32)
    await doubled.await_log("node.running", START_TIMEOUT)
    for old in (observers[1], observers[2], joining):
        old.terminate()
    for old in (observers[1], observers[2], joining):
        assert await old.await_exit(STOP_TIMEOUT + 5) == 0
    await cluster.wait_holdings({"observer-5"}, 32, "32 partitions on the new node")
    await publishing
    await publish_rounds(store, range(ROUNDS, ROUNDS + 1), 0)

    expected = len(STREAMS) * (ROUNDS + 1)

    async def all_applied() -> bool:
        ((count,),) = await fetch(postgres_pool, "SELECT count(*) FROM plain_rows")
        assert count <= expected, f"{count} rows for {expected} events"
        return int(count) == expected

    await wait_until(
        all_applied, timeout=PROCESSING_TIMEOUT, interval=0.2, description="every row"
    )
    duplicated = await fetch(
        postgres_pool,
        "SELECT event_id FROM plain_rows GROUP BY event_id HAVING count(*) > 1",
    )
    assert duplicated == []
    missing = await fetch(
        postgres_pool,
        "SELECT e.id FROM events e LEFT JOIN plain_rows r ON r.event_id = e.id "
        "WHERE e.category = %s AND r.event_id IS NULL",
        CATEGORY,
    )
    assert missing == []
    out_of_order = await fetch(
        postgres_pool,
        "SELECT stream FROM (SELECT stream, position, lag(position) OVER "
        "(PARTITION BY stream ORDER BY row_id) AS previous FROM plain_rows) r "
        "WHERE previous IS NOT NULL AND position <= previous",
    )
    assert out_of_order == []
    ((count,),) = await fetch(
        postgres_pool,
        'SELECT count FROM consumer_partitionings WHERE "group" = %s',
        GROUP,
    )
    assert count == 32
    # Both partition counts did work.
    workers = await fetch(postgres_pool, "SELECT DISTINCT node_id FROM plain_rows")
    assert {node for (node,) in workers} >= {"observer-2", "observer-3", "observer-5"}
