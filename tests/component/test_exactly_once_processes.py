"""Exactly once in effect, with real processes: an application with no idempotency.

The application (``tests/component/apps/plain_insert.py``) inserts one row per event
into a table without a key, with a per-event handler. A coordinator and three observers run it on PostgreSQL
while the test publishes events; one observer is SIGKILLed in the middle of a batch
and another SIGTERMed while events are still being published. The table must end
with exactly one row per event.
"""

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.types import NewEvent
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.consumers import source_key
from eventcomposition.consumers.partitions import (
    CategoryPartition,
    partition_of,
    partitions_of,
    source_identifier,
)
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
# As the application names them (its module is imported by the nodes, not here).
GROUP = "plain-insert"
CATEGORY = "plain"
PARTITIONS = 16  # the default count: the application's group names none
STREAMS = [f"s-{n}" for n in range(48)]  # in every one of the 16 partitions
BATCH_STARTED = "plain.batch-started"

START_TIMEOUT = 60.0
PROCESSING_TIMEOUT = 40.0
STOP_TIMEOUT = 5.0  # consumers.stop_timeout of the test profile
EVENTS = 900

HELD_SOURCES = """
    SELECT r.node_id, s.event_sources
    FROM subscriptions s JOIN subscribers r USING ("group", id)
    WHERE s."group" = %s
"""
CHECKPOINT = (
    'SELECT sequence_number FROM consumer_checkpoints WHERE "group" = %s '
    "AND source = %s"
)

type Pool = AsyncConnectionPool[AsyncConnection[Any]]


async def fetch(pool: Pool, query: str, *params: object) -> list[tuple[Any, ...]]:
    async with pool.connection() as connection:
        cursor = await connection.execute(query, params)
        return list(await cursor.fetchall())


async def holders(pool: Pool) -> dict[str, set[str]]:
    held: dict[str, set[str]] = {}
    for node_id, sources in await fetch(pool, HELD_SOURCES, GROUP):
        keys = {source_key(source_identifier(source)) for source in sources}
        if keys:
            held.setdefault(str(node_id), set()).update(keys)
    return held


async def publish(store: EventStore, first: int, last: int) -> None:
    """Events ``first`` to ``last - 1``, round robin over the streams, a few
    per call, as an application publishing while the cluster works."""
    for start in range(first, last, 10):
        numbers = range(start, min(start + 10, last))
        for index, stream in enumerate(STREAMS):
            mine = [n for n in numbers if n % len(STREAMS) == index]
            if mine:
                await store.stream(category=CATEGORY, stream=stream).publish(
                    events=[NewEvent(name="happened", payload={"n": n}) for n in mine]
                )


async def start_cluster(
    nodes: NodeProcesses, environment: dict[str, str], observers: Sequence[str]
) -> list[NodeProcess]:
    started = [
        nodes.run_node(
            env=environment,
            app=APP,
            role="observer",
            node_id=node_id,
            migrate=True,
            cwd=PROJECT_ROOT,
        )
        for node_id in observers
    ]
    for observer in started:
        await observer.await_log("node.running", START_TIMEOUT)
    return started


async def test_one_row_per_event_after_a_kill_mid_batch_and_a_stop(
    nodes: NodeProcesses, postgres_database: ConnectionInfo, postgres_pool: Pool
) -> None:
    environment = node_environment(
        postgres_database,
        settings_dir=SETTINGS_DIR,
        settings={"consumers.batch_size": 20},
    )
    victim, leaving, staying = await start_cluster(
        nodes, environment, ["observer-1", "observer-2", "observer-3"]
    )
    nodes.run_node(
        env=environment,
        app=APP,
        role="coordinator",
        node_id="coordinator-1",
        migrate=True,
        cwd=PROJECT_ROOT,
    )
    await wait_until(
        lambda: _spread(postgres_pool),
        timeout=START_TIMEOUT,
        description="every partition allocated, to all three observers",
    )
    store = EventStore(
        adapter=PostgresEventStorageAdapter(connection_source=postgres_pool)
    )

    # SIGKILL in the middle of a batch: its rows were written, not committed. A
    # batch takes 0.2 s (the application's pause): kill as one starts.
    publishing = asyncio.create_task(publish(store, 0, 300))
    batch = await victim.await_log(
        BATCH_STARTED, PROCESSING_TIMEOUT, after=victim.mark()
    )
    victim.kill()
    assert await victim.await_exit(10) == -9
    source = CategoryPartition(
        CATEGORY, partition_of(batch["first_stream"], PARTITIONS), PARTITIONS
    )
    checkpoint = await fetch(postgres_pool, CHECKPOINT, GROUP, source.key)
    committed = checkpoint[0][0] if checkpoint else -1
    assert committed < batch["first_sequence_number"], (
        "the killed batch had committed: the kill did not land mid-batch"
    )

    await publishing

    # SIGTERM while events are being published: it finishes its batch and leaves.
    publishing = asyncio.create_task(publish(store, 300, 600))
    await leaving.await_log(BATCH_STARTED, PROCESSING_TIMEOUT, after=leaving.mark())
    leaving.terminate()
    assert await leaving.await_exit(STOP_TIMEOUT + 5) == 0
    await publishing
    await publish(store, 600, EVENTS)

    # The survivor takes over the victim's sources once their claims expire
    # (consumers.claim_lease, 3 s here) and the leaver's at once.
    await wait_until(
        lambda: _rows(postgres_pool, EVENTS),
        timeout=PROCESSING_TIMEOUT,
        interval=0.2,
        description=f"{EVENTS} rows",
    )
    duplicated = await fetch(
        postgres_pool,
        "SELECT event_id, count(*) FROM plain_rows GROUP BY event_id "
        "HAVING count(*) > 1",
    )
    assert duplicated == []
    missing = await fetch(
        postgres_pool,
        "SELECT e.id FROM events e LEFT JOIN plain_rows r ON r.event_id = e.id "
        "WHERE e.category = %s AND r.event_id IS NULL",
        CATEGORY,
    )
    assert missing == []
    assert staying.running
    assert staying.logs(BATCH_STARTED)
    assert not staying.logs("consumer.event-parked")


async def _spread(pool: Pool) -> bool:
    held = await holders(pool)
    return set(held) == {"observer-1", "observer-2", "observer-3"} and set().union(
        *held.values()
    ) == {p.key for p in partitions_of(CATEGORY, PARTITIONS)}


async def _rows(pool: Pool, expected: int) -> bool:
    (row,) = await fetch(pool, "SELECT count(*) FROM plain_rows")
    count = int(row[0])
    assert count <= expected, f"{count} rows for {expected} events"
    return count == expected
