"""Partitions on PostgreSQL: the same hash in SQL as in Python, allocation through
the broker's state stores, and transactional consumers sharing one category."""

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from logicblocks.event.processing.broker.strategies.distributed import (
    COORDINATOR_LOCK_NAME,
)
from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.types import CategoryIdentifier, NewEvent, StoredEvent
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.broker.balancing import BalancingEventSubscriptionCoordinator
from eventcomposition.broker.leadership import CheckedPostgresLockManager
from eventcomposition.broker.stores import (
    AutocommitSubscriberStateStore,
    AutocommitSubscriptionStateStore,
    event_source_factory,
)
from eventcomposition.consumers import (
    BatchProcessor,
    PostgresCheckpointStore,
    PostgresEventReader,
    Transaction,
    TransactionalConsumer,
    make_transactional_consumer,
    retry_dead_letters,
)
from eventcomposition.consumers.partitions import (
    PARTITION_HASH_SQL,
    CategoryPartition,
    partition_of,
    partitions_of,
    stream_hash,
)
from eventcomposition.lag import PostgresEventCounter, PostgresHeadReader, SourceSpan
from eventcomposition.testing.capture import CapturingSubscriber
from eventcomposition.testing.postgres import ConnectionInfo

pytestmark = pytest.mark.postgres

type Pool = AsyncConnectionPool[AsyncConnection[Any]]

GROUP = "applied"
STREAMS = [f"customer-{n:03d}" for n in range(40)]


class InsertingProcessor(BatchProcessor):
    """One row per event, no idempotency; fails events whose payload says so."""

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        for event in events:
            assert isinstance(event.payload, dict)
            if event.payload.get("poison"):
                raise ValueError(f"cannot apply {event.id}")
        async with transaction.connection.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO applied (event_id, stream, position, sequence_number) "
                "VALUES (%s, %s, %s, %s)",
                [(e.id, e.stream, e.position, e.sequence_number) for e in events],
            )


@pytest_asyncio.fixture
async def pool(postgres_pool: Pool) -> Pool:
    async with postgres_pool.connection() as connection:
        await connection.execute(
            "CREATE TABLE applied (row_id bigserial, event_id text NOT NULL, "
            "stream text NOT NULL, position int NOT NULL, sequence_number bigint)"
        )
    return postgres_pool


async def publish(pool: Pool, rounds: int, poison: str | None = None) -> None:
    store = EventStore(adapter=PostgresEventStorageAdapter(connection_source=pool))
    for n in range(rounds):
        for stream in STREAMS:
            payload = {"n": n, "poison": stream == poison and n == 1}
            await store.stream(category="orders", stream=stream).publish(
                events=[NewEvent(name="placed", payload=payload)]
            )


async def rows(pool: Pool, query: str) -> list[tuple[Any, ...]]:
    async with pool.connection() as connection:
        return await (await connection.execute(query)).fetchall()


def consumer(pool: Pool, name: str) -> TransactionalConsumer:
    return make_transactional_consumer(
        event_store=EventStore(
            adapter=PostgresEventStorageAdapter(connection_source=pool)
        ),
        checkpoint_store=PostgresCheckpointStore(pool),
        subscriber_group=GROUP,
        subscription_requests=partitions_of("orders", 8),
        processor=InsertingProcessor(),
        batch_size=7,
        subscriber_id=name,
        node_id=f"node-{name}",
        poison_attempts=1,
    )


async def test_postgres_computes_the_same_stream_hash(pool: Pool) -> None:
    names = [*STREAMS, "", "a", "ü-ñ-東京", "x" * 300]
    found = await rows(
        pool,
        f"SELECT s.stream, {PARTITION_HASH_SQL} "
        "FROM unnest(ARRAY[" + ",".join(f"'{n}'" for n in names) + "]) AS s(stream)",
    )
    assert dict(found) == {name: stream_hash(name) for name in names}


async def test_partitions_round_trip_through_the_broker_state_stores(
    postgres_database: ConnectionInfo, pool: Pool
) -> None:
    partitions = partitions_of("orders", 16)
    subscriptions = AutocommitSubscriptionStateStore(
        node_id="coordinator", connection_pool=pool
    )
    lock_manager = CheckedPostgresLockManager(
        connection_settings=postgres_database.connection_settings()
    )
    coordinator = BalancingEventSubscriptionCoordinator(
        node_id="coordinator",
        lock_manager=lock_manager,
        subscriber_state_store=AutocommitSubscriberStateStore(
            node_id="coordinator", connection_pool=pool
        ),
        subscription_state_store=subscriptions,
        release_grace=timedelta(seconds=30),
    )
    for name in ("a", "b", "c"):
        await AutocommitSubscriberStateStore(
            node_id=f"node-{name}", connection_pool=pool
        ).add(CapturingSubscriber("totals", name, partitions))

    async with lock_manager.try_lock(COORDINATOR_LOCK_NAME) as lock:
        assert lock.locked
        await coordinator.distribute()
        changes = coordinator.allocation_changes_total
        await coordinator.distribute()  # read back equal: nothing rewritten
        assert coordinator.allocation_changes_total == changes

    held = {s.id: list(s.event_sources) for s in await subscriptions.list()}
    assert sorted(len(sources) for sources in held.values()) == [5, 5, 6]
    everything = sorted((s for ss in held.values() for s in ss), key=repr)
    assert everything == sorted(partitions, key=repr)


async def test_consumers_of_partitions_apply_each_event_once_in_stream_order(
    pool: Pool,
) -> None:
    await publish(pool, rounds=5, poison="customer-007")
    adapter = PostgresEventStorageAdapter(connection_source=pool)
    sources = event_source_factory(adapter)
    consumers = [consumer(pool, name) for name in ("a", "b", "c")]
    for index, partition in enumerate(partitions_of("orders", 8)):
        await consumers[index % 3].accept(sources.construct(partition))

    for each in consumers:
        await each.consume_all()

    applied = await rows(
        pool, "SELECT stream, position, sequence_number FROM applied ORDER BY row_id"
    )
    # customer-007's event at position 1 is parked; its later events wait behind
    # it (poison_order = "stream"), the other streams of its partition go on.
    parked = {("customer-007", p) for p in range(1, 5)}
    expected = {(s, p) for s in STREAMS for p in range(5)} - parked
    assert len(applied) == len(expected)
    assert {(s, p) for s, p, _ in applied} == expected
    for stream in STREAMS:
        positions = [p for s, p, _ in applied if s == stream]
        assert positions == sorted(positions)

    store = PostgresCheckpointStore(pool)
    checkpoints = await store.positions(GROUP)
    assert set(checkpoints) == {f"orders#{i}/8" for i in range(8)}
    heads = await PostgresHeadReader(pool).heads(partitions_of("orders", 8))
    last = {partition_of(s, 8): q for s, _, q in sorted(applied, key=lambda r: r[2])}
    poisoned_at = partition_of("customer-007", 8)
    for index in range(8):
        assert (
            heads[CategoryPartition("orders", index, 8)]
            == checkpoints[f"orders#{index}/8"]
        )
        if index != poisoned_at:
            assert checkpoints[f"orders#{index}/8"] == last[index]

    letters = await store.dead_letters(GROUP)
    assert {letter.source for letter in letters} == {f"orders#{poisoned_at}/8"}
    # The failed event, then the stream's later events waiting behind it.
    behind = await rows(
        pool,
        "SELECT position, sequence_number FROM events "
        "WHERE stream = 'customer-007' AND position >= 1 ORDER BY sequence_number",
    )
    assert sorted((letter.sequence_number, letter.waiting) for letter in letters) == [
        (sequence_number, position > 1) for position, sequence_number in behind
    ]
    result = await retry_dead_letters(
        checkpoint_store=store,
        event_reader=consumers[0].event_reader,
        group=GROUP,
        processor=_Healed(),
    )
    assert [r.source for r in result.applied] == [letters[0].source] * 4
    retried = await rows(
        pool,
        "SELECT position FROM applied WHERE stream = 'customer-007' ORDER BY row_id",
    )
    assert [p for (p,) in retried] == [0, 1, 2, 3, 4]


class _Healed(InsertingProcessor):
    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        async with transaction.connection.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO applied (event_id, stream, position, sequence_number) "
                "VALUES (%s, %s, %s, %s)",
                [(e.id, e.stream, e.position, e.sequence_number) for e in events],
            )


async def test_a_partition_reads_exactly_its_streams_events_in_order(
    pool: Pool,
) -> None:
    await publish(pool, rounds=3)
    reader = PostgresEventReader(pool)
    everything = await reader.read(CategoryIdentifier("orders"), after=None, limit=999)
    counter = PostgresEventCounter(pool)
    # Counts dividing the index's buckets, a multiple of them, and neither.
    for count in (1, 2, 3, 16, 64, 128):
        partitions = partitions_of("orders", count)
        heads = await reader.heads(partitions)
        last = everything[-1].sequence_number
        spans = [SourceSpan(p, everything[3].sequence_number, last) for p in partitions]
        assert await counter.counts(spans) == [
            sum(1 for e in everything[4:] if p.holds(e.stream)) for p in partitions
        ]
        for partition in partitions:
            mine = [e for e in everything if partition.holds(e.stream)]
            read = await reader.read(partition, after=None, limit=999)
            assert [e.id for e in read] == [e.id for e in mine]
            assert heads[partition] == (mine[-1].sequence_number if mine else None)
            if len(mine) >= 4:  # from the middle, a batch at a time
                batch = await reader.read(
                    partition, after=mine[1].sequence_number, limit=2
                )
                assert [e.id for e in batch] == [e.id for e in mine[2:4]]
