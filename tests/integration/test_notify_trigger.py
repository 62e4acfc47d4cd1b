"""The NOTIFY trigger on the events table, against a real PostgreSQL server.

Each inserting statement sends the distinct categories it wrote, once; ``migrate``
keeps the trigger across runs and names a trigger or function of its names that is
not eventcomposition's.
"""

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from logicblocks.event.store import EventStore
from logicblocks.event.store.adapters import PostgresEventStorageAdapter
from logicblocks.event.types import NewEvent
from psycopg import AsyncConnection, Notify
from psycopg_pool import AsyncConnectionPool

from eventcomposition.schema import (
    NOTIFY_CHANNEL,
    NOTIFY_WILDCARD,
    SchemaIncompatibleError,
    migrate,
)
from eventcomposition.testing import (
    ConnectionInfo,
    PostgresServer,
    create_database,
    drop_database,
    unique_database_name,
)

type Pool = AsyncConnectionPool[AsyncConnection[Any]]

INSERT_EVENT = (
    "INSERT INTO events (id, name, stream, category, position, payload, "
    "observed_at, occurred_at) "
    "SELECT 'e' || n, 'placed', 's' || n, %s || n %% %s, 0, '{}', now(), now() "
    "FROM generate_series(1, %s) AS n"
)


@pytest.fixture
def empty_database(postgres_server: PostgresServer) -> Iterator[ConnectionInfo]:
    admin = postgres_server.connection_info
    name = unique_database_name("eventcomposition_empty")
    database = create_database(admin, name)
    try:
        yield database
    finally:
        drop_database(admin, name)


async def connect(database: ConnectionInfo) -> AsyncConnection[Any]:
    return await AsyncConnection.connect(database.conninfo, autocommit=True)


@pytest.fixture
async def listener(
    postgres_database: ConnectionInfo,
) -> AsyncIterator[AsyncConnection[Any]]:
    async with await connect(postgres_database) as connection:
        await connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
        yield connection


async def received(connection: AsyncConnection[Any], within: float) -> list[Notify]:
    """Every notification that arrives within ``within`` seconds."""
    return [notify async for notify in connection.notifies(timeout=within)]


async def categories_notified(connection: AsyncConnection[Any]) -> list[Any]:
    return [json.loads(notify.payload) for notify in await received(connection, 0.5)]


async def test_a_publish_notifies_its_category_once(
    listener: AsyncConnection[Any], postgres_pool: Pool
) -> None:
    store = EventStore(
        adapter=PostgresEventStorageAdapter(connection_source=postgres_pool)
    )

    await store.stream(category="orders", stream="c1").publish(
        events=[NewEvent(name="placed", payload={}) for _ in range(3)]
    )

    assert await categories_notified(listener) == [["orders"]]


async def test_one_statement_notifies_its_distinct_categories_once(
    listener: AsyncConnection[Any], postgres_database: ConnectionInfo
) -> None:
    async with await connect(postgres_database) as writer:
        await writer.execute(INSERT_EVENT, ["cat-", 3, 30])

    notified = await categories_notified(listener)
    assert len(notified) == 1
    assert sorted(notified[0]) == ["cat-0", "cat-1", "cat-2"]


async def test_a_statement_inserting_nothing_notifies_nothing(
    listener: AsyncConnection[Any], postgres_database: ConnectionInfo
) -> None:
    async with await connect(postgres_database) as writer:
        await writer.execute(INSERT_EVENT, ["cat-", 3, 0])

    assert await categories_notified(listener) == []


async def test_a_rolled_back_insert_notifies_nothing(
    listener: AsyncConnection[Any], postgres_database: ConnectionInfo
) -> None:
    async with (
        await connect(postgres_database) as writer,
        writer.transaction(force_rollback=True),
    ):
        await writer.execute(INSERT_EVENT, ["cat-", 3, 3])

    assert await categories_notified(listener) == []


async def test_categories_beyond_the_payload_limit_notify_the_wildcard(
    listener: AsyncConnection[Any], postgres_database: ConnectionInfo
) -> None:
    # 400 categories of ~30 bytes each: about 13 kB as a JSON array.
    prefix = "a-category-with-a-long-name-"
    async with await connect(postgres_database) as writer:
        await writer.execute(INSERT_EVENT, [prefix, 400, 400])

    notifies = await received(listener, 0.5)
    assert [notify.payload for notify in notifies] == [NOTIFY_WILDCARD]


async def trigger_count(connection: AsyncConnection[Any]) -> int:
    cursor = await connection.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'events'::regclass "
        "AND NOT tgisinternal"
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def test_the_trigger_survives_migrate_twice(
    empty_database: ConnectionInfo,
) -> None:
    first = await migrate(empty_database.conninfo)
    second = await migrate(empty_database.conninfo)
    third = await migrate(empty_database.conninfo)

    assert first.created_triggers == ("eventcomposition_notify_events",)
    assert second.created_triggers == third.created_triggers == ()
    assert not second.changed
    async with (
        await connect(empty_database) as reader,
        await connect(empty_database) as writer,
    ):
        assert await trigger_count(reader) == 1
        await reader.execute(f"LISTEN {NOTIFY_CHANNEL}")
        await writer.execute(INSERT_EVENT, ["after-", 1, 1])
        assert await categories_notified(reader) == [["after-0"]]


async def test_a_foreign_trigger_of_that_name_is_named_and_nothing_changes(
    empty_database: ConnectionInfo,
) -> None:
    await migrate(empty_database.conninfo)
    async with await connect(empty_database) as connection:
        await connection.execute(
            "DROP TRIGGER eventcomposition_notify_events ON events"
        )
        await connection.execute(
            "CREATE FUNCTION audit_events() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RETURN NEW; END $$"
        )
        await connection.execute(
            "CREATE TRIGGER eventcomposition_notify_events AFTER INSERT OR UPDATE "
            "ON events FOR EACH ROW EXECUTE FUNCTION audit_events()"
        )

        with pytest.raises(SchemaIncompatibleError) as raised:
            await migrate(empty_database.conninfo)

        message = str(raised.value)
        assert (
            "trigger 'eventcomposition_notify_events' on table 'events' exists but "
            "is incompatible" in message
        )
        assert "not a statement-level AFTER INSERT trigger" in message
        assert "it runs audit_events(), not eventcomposition_notify_events()" in message
        assert raised.value.tables == ()
        assert await trigger_count(connection) == 1


async def test_a_foreign_function_of_that_name_is_named(
    empty_database: ConnectionInfo,
) -> None:
    async with await connect(empty_database) as connection:
        await connection.execute(
            "CREATE FUNCTION eventcomposition_notify_events() RETURNS integer "
            "LANGUAGE sql AS 'SELECT 1'"
        )

        with pytest.raises(SchemaIncompatibleError) as raised:
            await migrate(empty_database.conninfo)

        assert str(raised.value).startswith(
            "function 'eventcomposition_notify_events()' exists but is "
            "incompatible: it returns integer, not trigger"
        )
        cursor = await connection.execute("SELECT to_regclass('events') IS NULL")
        assert await cursor.fetchone() == (True,)
