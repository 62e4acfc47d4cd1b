"""Lag on PostgreSQL: every head read in one query, the same as the adapter says."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.types import (
    CategoryIdentifier,
    EventSourceIdentifier,
    JsonValue,
    LogIdentifier,
    NewEvent,
    StreamIdentifier,
)
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from eventcomposition.cli.cluster import read_status
from eventcomposition.consumers import make_subscription_consumer
from eventcomposition.lag import (
    EventStoreHeadReader,
    HeldSource,
    LagReader,
    PostgresEventCounter,
    PostgresHeadReader,
    SourceLag,
    SourceSpan,
)
from eventcomposition.testing.capture import CapturingProcessor


@dataclass(frozen=True)
class Elsewhere(EventSourceIdentifier):
    """A kind of source the PostgreSQL readers do not know (as a partition)."""

    def serialise(self, fallback: Callable[[object], JsonValue] = str) -> JsonValue:
        return {"type": "elsewhere"}


type Pool = AsyncConnectionPool[AsyncConnection[Any]]

ORDERS = CategoryIdentifier(category="orders")
PAYMENTS = CategoryIdentifier(category="payments")
EMPTY = CategoryIdentifier(category="nothing-here")
ORDER_1 = StreamIdentifier(category="orders", stream="o-1")
ORDER_2 = StreamIdentifier(category="orders", stream="o-2")
NO_ORDER = StreamIdentifier(category="orders", stream="o-9")


async def publish(store: EventStore, stream: StreamIdentifier, count: int) -> list[int]:
    events = await store.stream(category=stream.category, stream=stream.stream).publish(
        events=[NewEvent(name="happened", payload={"n": n}) for n in range(count)]
    )
    return [event.sequence_number for event in events]


async def interleaved(pool: Pool) -> dict[EventSourceIdentifier, int]:
    store = EventStore(adapter=PostgresEventStorageAdapter(connection_source=pool))
    await publish(store, ORDER_1, 3)
    payments = await publish(
        store, StreamIdentifier(category="payments", stream="p-1"), 2
    )
    second = await publish(store, ORDER_2, 4)
    last = await publish(store, ORDER_1, 1)
    return {
        ORDERS: last[-1],
        ORDER_1: last[-1],
        ORDER_2: second[-1],
        PAYMENTS: payments[-1],
        LogIdentifier(): last[-1],
    }


async def test_every_kind_of_source_gets_its_head(postgres_pool: Pool) -> None:
    expected = await interleaved(postgres_pool)
    sources: list[EventSourceIdentifier] = [
        ORDERS,
        PAYMENTS,
        EMPTY,
        ORDER_1,
        ORDER_2,
        NO_ORDER,
        LogIdentifier(),
    ]

    heads = await PostgresHeadReader(postgres_pool).heads(sources)

    assert heads == {**expected, EMPTY: None, NO_ORDER: None}


async def test_the_query_agrees_with_the_storage_adapter(postgres_pool: Pool) -> None:
    await interleaved(postgres_pool)
    sources: list[EventSourceIdentifier] = [
        ORDERS,
        PAYMENTS,
        EMPTY,
        ORDER_1,
        ORDER_2,
        NO_ORDER,
        LogIdentifier(),
    ]
    adapter = PostgresEventStorageAdapter(connection_source=postgres_pool)

    by_query = await PostgresHeadReader(postgres_pool).heads(sources)
    by_adapter = await EventStoreHeadReader(adapter).heads(sources)

    assert by_query == by_adapter


async def test_no_sources_need_no_query(postgres_pool: Pool) -> None:
    await postgres_pool.close()

    assert await PostgresHeadReader(postgres_pool).heads([]) == {}


async def test_lag_of_held_sources_from_their_checkpoints(postgres_pool: Pool) -> None:
    heads = await interleaved(postgres_pool)
    held = [
        HeldSource("totals", ORDERS),
        HeldSource("audit", ORDERS),
        HeldSource("totals", PAYMENTS),
        HeldSource("totals", EMPTY),
    ]
    checkpoints = {held[0]: heads[ORDERS], held[1]: heads[ORDER_2]}

    async def read_checkpoints(
        holdings: object,
    ) -> dict[HeldSource, int | None]:
        return {holding: checkpoints.get(holding) for holding in held}

    reader = LagReader(
        held=lambda: held,
        checkpoints=read_checkpoints,
        heads=PostgresHeadReader(postgres_pool),
    )

    lags = await reader.holdings()

    assert lags == [
        SourceLag("totals", ORDERS, heads[ORDERS], heads[ORDERS]),
        SourceLag("audit", ORDERS, heads[ORDER_2], heads[ORDERS]),
        SourceLag("totals", PAYMENTS, None, heads[PAYMENTS]),
        SourceLag("totals", EMPTY, None, None),
    ]
    assert [lag.lag for lag in lags] == [
        0,
        heads[ORDERS] - heads[ORDER_2],
        heads[PAYMENTS] + 1,
        0,
    ]


async def test_cluster_status_reads_a_per_event_groups_saved_positions(
    postgres_pool: Pool,
) -> None:
    # A per-event consumer keeps its position in logicblocks' state store, not in
    # the checkpoint table: the cluster's status must read it from there.
    store = EventStore(
        adapter=PostgresEventStorageAdapter(connection_source=postgres_pool)
    )
    consumer = make_subscription_consumer(
        event_store=store,
        subscriber_group="projection",
        subscription_requests=[ORDERS],
        event_processor=CapturingProcessor(),
        subscriber_id="sub-1",
    )
    async with postgres_pool.connection() as connection:
        await connection.execute(
            "INSERT INTO subscribers VALUES ('projection', 'sub-1', 'node-1', %s, "
            "now())",
            [Jsonb([ORDERS.serialise()])],
        )
        await connection.execute(
            "INSERT INTO subscriptions VALUES ('projection', 'sub-1', 'node-1', %s)",
            [Jsonb([ORDERS.serialise()])],
        )
    heads = await interleaved(postgres_pool)
    await consumer.accept(store.category(category="orders"))

    before = await read_status(postgres_pool, "test", timedelta(minutes=1))
    await consumer.consume_all()
    after = await read_status(postgres_pool, "test", timedelta(minutes=1))

    [behind] = before.groups[0].holdings
    assert behind.checkpoint is None
    assert behind.lag == heads[ORDERS] + 1
    [caught_up] = after.groups[0].holdings
    assert caught_up.checkpoint == heads[ORDERS]
    assert caught_up.lag == 0


async def test_the_counter_counts_each_spans_events_of_its_own_source(
    postgres_pool: Pool,
) -> None:
    store = EventStore(
        adapter=PostgresEventStorageAdapter(connection_source=postgres_pool)
    )
    first = await publish(store, ORDER_1, 3)
    payments = await publish(
        store, StreamIdentifier(category="payments", stream="p-1"), 2
    )
    second = await publish(store, ORDER_2, 4)
    last = await publish(store, ORDER_1, 1)

    counts = await PostgresEventCounter(postgres_pool).counts(
        [
            SourceSpan(ORDERS, None, last[-1]),
            SourceSpan(ORDERS, first[-1], last[-1]),
            SourceSpan(PAYMENTS, first[0], payments[0]),
            SourceSpan(ORDER_1, first[0], last[-1]),
            SourceSpan(ORDER_2, second[1], second[-1]),
            SourceSpan(LogIdentifier(), payments[-1], last[-1]),
            SourceSpan(EMPTY, None, last[-1]),
            SourceSpan(ORDERS, last[-1], first[0]),
        ]
    )
    unknown = await PostgresEventCounter(postgres_pool).counts(
        [SourceSpan(Elsewhere(), None, last[-1])]
    )

    assert counts == [8, 5, 1, 3, 2, 5, 0, 0]
    assert unknown == [None]
