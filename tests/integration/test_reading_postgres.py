"""The PostgreSQL reader of transactional consumers: events decoded as logicblocks
decodes them, and batches read ahead that neither skip nor repeat an event while
writers commit out of order."""

import asyncio
from collections.abc import Sequence
from typing import Any

from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.store.adapters.base import EventSerialisationGuarantee
from logicblocks.event.types import CategoryIdentifier, NewEvent, StoredEvent
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.consumers import (
    BatchProcessor,
    PostgresCheckpointStore,
    PostgresEventReader,
    Transaction,
    make_transactional_consumer,
)
from eventcomposition.consumers.decoding import stored_event_rows

type Pool = AsyncConnectionPool[AsyncConnection[Any]]

ORDERS = CategoryIdentifier(category="orders")
PAYLOADS: list[Any] = [
    {"order_id": "order-1", "amount_cents": 4977, "note": "caf\u00e9"},
    {"big": 123456789012345678901234567890, "edge": 18446744073709551616},
    {"id": "1234567890123456789012345", "ratio": 0.1234567890123456789},
    [1, 2.5, -3e-7, True, False, None, "", {}],
    {"nested": {"deep": [[[]]]}},
]


def store(pool: Pool, guarantee: Any = EventSerialisationGuarantee.LOG) -> EventStore:
    return EventStore(
        adapter=PostgresEventStorageAdapter(
            connection_source=pool, serialisation_guarantee=guarantee
        )
    )


async def test_events_read_equal_those_logicblocks_reads(
    postgres_pool: Pool,
) -> None:
    await (
        store(postgres_pool)
        .stream(category="orders", stream="s")
        .publish(
            events=[NewEvent(name="placed", payload=payload) for payload in PAYLOADS]
        )
    )
    orders = store(postgres_pool).category(category="orders")
    theirs = [event async for event in orders.iterate()]

    ours = await PostgresEventReader(postgres_pool).read(ORDERS, after=None, limit=10)

    assert [type(event) for event in ours] == [StoredEvent] * len(PAYLOADS)
    assert list(ours) == theirs
    assert [event.payload for event in ours] == PAYLOADS


async def test_rows_of_other_columns_are_made_by_the_constructor(
    postgres_pool: Pool,
) -> None:
    await (
        store(postgres_pool)
        .stream(category="orders", stream="s")
        .publish(events=[NewEvent(name="placed", payload={"n": 1})])
    )
    (expected,) = await PostgresEventReader(postgres_pool).read(
        ORDERS, after=None, limit=1
    )
    async with (
        postgres_pool.connection() as connection,
        connection.cursor(row_factory=stored_event_rows) as cursor,
    ):
        await cursor.execute(
            "SELECT occurred_at, observed_at, payload, sequence_number, position, "
            "category, stream, name, id FROM events"
        )
        made = await cursor.fetchall()

    assert made == [expected]


class Recording(BatchProcessor):
    """Keeps the sequence numbers of committed batches (a rolled-back batch adds
    none)."""

    def __init__(self) -> None:
        self.applied: list[int] = []

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        numbers = [event.sequence_number for event in events]
        transaction.on_commit(lambda: self.applied.extend(numbers))


async def test_reading_ahead_among_out_of_order_commits_skips_and_repeats_nothing(
    postgres_pool: Pool,
) -> None:
    writers, per_writer = 4, 40
    out_of_order = store(postgres_pool, EventSerialisationGuarantee.STREAM)
    processor = Recording()
    consumer = make_transactional_consumer(
        event_store=store(postgres_pool),
        checkpoint_store=PostgresCheckpointStore(postgres_pool),
        subscriber_group="read-ahead",
        subscription_requests=[ORDERS],
        processor=processor,
        batch_size=7,  # full batches, so each reads the next one ahead
        node_id="node",
        read_ahead=True,
    )
    assert consumer.read_ahead
    await consumer.accept(store(postgres_pool).category(category="orders"))

    async def write(writer: int) -> None:
        for n in range(per_writer):
            await out_of_order.stream(category="orders", stream=f"s{writer}").publish(
                events=[NewEvent(name="placed", payload={"n": n})]
            )

    writing = asyncio.gather(*(write(writer) for writer in range(writers)))
    while not writing.done():
        await consumer.consume_all()
        await asyncio.sleep(0)
    await writing
    await consumer.consume_all()

    async with postgres_pool.connection() as connection:
        cursor = await connection.execute(
            "SELECT sequence_number FROM events ORDER BY sequence_number"
        )
        stored = [int(row[0]) for row in await cursor.fetchall()]
    assert len(stored) == writers * per_writer
    assert processor.applied == stored
