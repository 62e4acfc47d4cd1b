"""Gap-safe reading on PostgreSQL: under the ``STREAM`` serialisation guarantee a
writer can commit a lower sequence number after others committed higher ones; no
consumer may move its checkpoint past the lower one and skip it."""

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest_asyncio
from logicblocks.event.processing import EventProcessor
from logicblocks.event.store import (
    EventStore,
    EventStoreEventSourceFactory,
    PostgresEventStorageAdapter,
)
from logicblocks.event.store.adapters.base import EventSerialisationGuarantee
from logicblocks.event.types import CategoryIdentifier, NewEvent, StoredEvent
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from eventcomposition.consumers import (
    BatchProcessor,
    PostgresCheckpointStore,
    Transaction,
    make_subscription_consumer,
    make_transactional_consumer,
)
from eventcomposition.consumers.visibility import (
    GapSafeStorageAdapter,
    PostgresVisibilityHorizon,
)

type Pool = AsyncConnectionPool[AsyncConnection[Any]]

WRITERS = 4
EVENTS_PER_WRITER = 25


class Recording(BatchProcessor):
    def __init__(self) -> None:
        self.applied: list[int] = []

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        self.applied.extend(event.sequence_number for event in events)


class RecordingPerEvent(EventProcessor[StoredEvent]):
    def __init__(self) -> None:
        self.applied: list[int] = []

    async def process_event(self, event: StoredEvent) -> None:
        self.applied.append(event.sequence_number)


@asynccontextmanager
async def slow_writer(pool: Pool) -> AsyncIterator[int]:
    """A writer that inserts one event and holds its transaction open until the
    block ends (then commits): its sequence number is taken, not yet visible."""
    async with pool.connection() as connection, connection.transaction():
        cursor = await connection.execute(
            "INSERT INTO events (id, name, stream, category, position, payload, "
            "observed_at, occurred_at) VALUES ('slow', 'placed', 'slow', 'orders', 0, "
            "%s, now(), now()) RETURNING sequence_number",
            [Jsonb({"slow": True})],
        )
        row = await cursor.fetchone()
        assert row is not None
        yield int(row[0])


async def concurrent_writers(pool: Pool) -> None:
    """``WRITERS`` writers at once under the STREAM guarantee, each on its stream."""
    store = EventStore(
        adapter=PostgresEventStorageAdapter(
            connection_source=pool,
            serialisation_guarantee=EventSerialisationGuarantee.STREAM,
        )
    )

    async def write(writer: int) -> None:
        for n in range(EVENTS_PER_WRITER):
            await store.stream(category="orders", stream=f"s{writer}").publish(
                events=[NewEvent(name="placed", payload={"n": n})]
            )

    await asyncio.gather(*(write(writer) for writer in range(WRITERS)))


async def all_sequence_numbers(pool: Pool) -> list[int]:
    async with pool.connection() as connection:
        cursor = await connection.execute(
            "SELECT sequence_number FROM events WHERE category = 'orders' "
            "ORDER BY sequence_number"
        )
        return [int(row[0]) for row in await cursor.fetchall()]


@pytest_asyncio.fixture
async def pool(postgres_pool: Pool) -> Pool:
    return postgres_pool


async def test_a_transactional_consumer_skips_no_late_committed_event(
    pool: Pool,
) -> None:
    processor = Recording()
    consumer = make_transactional_consumer(
        event_store=EventStore(
            adapter=PostgresEventStorageAdapter(connection_source=pool)
        ),
        checkpoint_store=PostgresCheckpointStore(pool),
        subscriber_group="gap-safe",
        subscription_requests=[CategoryIdentifier(category="orders")],
        processor=processor,
        node_id="node",
    )
    await consumer.accept(
        EventStore(
            adapter=PostgresEventStorageAdapter(connection_source=pool)
        ).category(category="orders")
    )

    async with slow_writer(pool) as slow:
        await concurrent_writers(pool)
        # Everything after the slow writer's number is committed: a reader that
        # trusts commit order moves its checkpoint past it here.
        await consumer.consume_all()
        assert all(applied < slow for applied in processor.applied)
    await consumer.consume_all()

    assert processor.applied == await all_sequence_numbers(pool)
    assert slow in processor.applied


async def test_a_per_event_subscription_consumer_skips_no_late_committed_event(
    pool: Pool,
) -> None:
    # The sources logicblocks' subscription consumers read come from the broker's
    # event source factory, over the gap-safe adapter (see broker/builders.py).
    adapter = PostgresEventStorageAdapter(connection_source=pool)
    sources = EventStoreEventSourceFactory(
        adapter=GapSafeStorageAdapter(adapter, PostgresVisibilityHorizon(pool))
    )
    processor = RecordingPerEvent()
    consumer = make_subscription_consumer(
        event_store=EventStore(adapter=adapter),
        subscriber_group="gap-safe",
        subscription_requests=[CategoryIdentifier(category="orders")],
        event_processor=processor,
    )
    await consumer.accept(sources.construct(CategoryIdentifier(category="orders")))

    async with slow_writer(pool) as slow:
        await concurrent_writers(pool)
        await consumer.consume_all()
        assert all(applied < slow for applied in processor.applied)
    await consumer.consume_all()

    assert processor.applied == await all_sequence_numbers(pool)
