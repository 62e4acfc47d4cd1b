"""``publish_events`` writes each category's events in one transaction."""

from typing import Any

from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.publishing import EventToPublish, publish_events

type Pool = AsyncConnectionPool[AsyncConnection[Any]]


def interleaved(category: str, streams: int, per_stream: int) -> list[EventToPublish]:
    return [
        EventToPublish(category, f"s-{s}", "happened", {"n": n})
        for n in range(per_stream)
        for s in range(streams)
    ]


async def transactions_by_category(pool: Pool) -> dict[str, int]:
    async with pool.connection() as connection:
        cursor = await connection.execute(
            "SELECT category, count(DISTINCT xmin::text) FROM events GROUP BY category"
        )
        return {category: count for category, count in await cursor.fetchall()}


async def test_an_interleaved_file_is_one_transaction_per_category(
    postgres_pool: Pool,
) -> None:
    store = EventStore(
        adapter=PostgresEventStorageAdapter(connection_source=postgres_pool)
    )
    events = interleaved("orders", streams=7, per_stream=30) + interleaved(
        "invoices", streams=3, per_stream=5
    )

    stored = await publish_events(store, events)

    assert await transactions_by_category(postgres_pool) == {"orders": 1, "invoices": 1}
    assert [(e.category, e.stream, e.payload) for e in stored] == [
        (e.category, e.stream, e.payload) for e in events
    ]
    assert [
        e.position for e in stored if e.stream == "s-2" and e.category == "orders"
    ] == list(range(30))
