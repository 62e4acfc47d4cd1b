"""The schema eventcomposition owns, against a real PostgreSQL server.

``migrate`` must be idempotent, safe to run from several nodes at once, reject tables
that do not fit, and give the logicblocks 0.1.11 PostgreSQL adapters everything they
need: the adapters themselves are exercised on a migrated database.
"""

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from logicblocks.event.processing.broker.strategies.distributed import (
    EventSubscriptionState,
    EventSubscriptionStateChange,
    EventSubscriptionStateChangeType,
    PostgresEventSubscriberStateStore,
    PostgresEventSubscriptionStateStore,
)
from logicblocks.event.projection import ProjectionStore
from logicblocks.event.projection.store import PostgresProjectionStorageAdapter
from logicblocks.event.query import (
    FilterClause,
    OffsetPagingClause,
    Operator,
    Path,
    Similarity,
    SortClause,
    SortField,
    SortOrder,
)
from logicblocks.event.store import EventStore, StreamPublishDefinition
from logicblocks.event.store.adapters import PostgresEventStorageAdapter
from logicblocks.event.types import (
    CategoryIdentifier,
    EventSourceIdentifier,
    JsonValue,
    NewEvent,
    Projection,
    StreamIdentifier,
)
from logicblocks.event.utils.clock import StaticClock
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.errors import EventCompositionError
from eventcomposition.schema import (
    OWNED_TABLES,
    SchemaIncompatibleError,
    SchemaMigrationError,
    migrate,
    schema_sql,
)
from eventcomposition.testing import (
    ConnectionInfo,
    PostgresServer,
    create_database,
    drop_database,
    unique_database_name,
)
from eventcomposition.testing.capture import CapturingSubscriber

type Pool = AsyncConnectionPool[AsyncConnection[Any]]

UPSTREAM_STYLE_EVENTS_TABLE = """
    CREATE TABLE events (
        id TEXT NOT NULL PRIMARY KEY,
        name TEXT NOT NULL,
        stream TEXT NOT NULL,
        category TEXT NOT NULL,
        position INT NOT NULL,
        payload JSONB NOT NULL,
        sequence_number BIGSERIAL NOT NULL,
        observed_at TIMESTAMP WITH TIME ZONE NOT NULL,
        occurred_at TIMESTAMP WITH TIME ZONE NOT NULL
    )
"""


@pytest.fixture
def empty_database(postgres_server: PostgresServer) -> Iterator[ConnectionInfo]:
    """A database with nothing in it: not copied from the migrated template."""
    admin = postgres_server.connection_info
    name = unique_database_name("eventcomposition_empty")
    database = create_database(admin, name)
    try:
        yield database
    finally:
        drop_database(admin, name)


@pytest.fixture
async def empty_connection(
    empty_database: ConnectionInfo,
) -> AsyncIterator[AsyncConnection[Any]]:
    connection = await AsyncConnection.connect(empty_database.conninfo, autocommit=True)
    async with connection:
        yield connection


async def relations(connection: AsyncConnection[Any]) -> dict[str, str]:
    """Tables and indexes of the public schema, name to kind."""
    cursor = await connection.execute(
        "SELECT c.relname, c.relkind::text FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i')"
    )
    return {str(name): str(kind) for name, kind in await cursor.fetchall()}


async def column_types(connection: AsyncConnection[Any], table: str) -> dict[str, str]:
    cursor = await connection.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = %s",
        [table],
    )
    return {str(name): str(type_name) for name, type_name in await cursor.fetchall()}


async def table_exists(connection: AsyncConnection[Any], table: str) -> bool:
    cursor = await connection.execute("SELECT to_regclass(%s) IS NOT NULL", [table])
    row = await cursor.fetchone()
    assert row is not None
    return bool(row[0])


class TestMigrate:
    async def test_creates_every_owned_table_index_and_pg_trgm(
        self, empty_database: ConnectionInfo, empty_connection: AsyncConnection[Any]
    ) -> None:
        result = await migrate(empty_database.conninfo)

        assert result.changed
        assert result.created_tables == (
            "events",
            "projections",
            "subscribers",
            "subscriptions",
            "consumer_claims",
            "consumer_checkpoints",
            "consumer_dead_letters",
            "projection_versions",
            "consumer_partitionings",
            "consumer_partition_floors",
        )
        assert result.created_extensions == ("pg_trgm",)
        found = await relations(empty_connection)
        for table in OWNED_TABLES:
            assert found.get(table.name) == "r"
            for index in table.indexes:
                assert found.get(index) == "i", index
            types = await column_types(empty_connection, table.name)
            assert types == {
                column.name: column.accepted_types[0] for column in table.columns
            }
        assert set(result.created_indexes) == {
            index for table in OWNED_TABLES for index in table.indexes
        }

    async def test_running_twice_changes_nothing(
        self, empty_database: ConnectionInfo, empty_connection: AsyncConnection[Any]
    ) -> None:
        await migrate(empty_database.conninfo)
        after_first = await relations(empty_connection)

        second = await migrate(empty_database.conninfo)

        assert not second.changed
        assert second.created_tables == ()
        assert second.created_indexes == ()
        assert second.created_extensions == ()
        assert second.tables == (
            "events",
            "projections",
            "subscribers",
            "subscriptions",
            "consumer_claims",
            "consumer_checkpoints",
            "consumer_dead_letters",
            "projection_versions",
            "consumer_partitionings",
            "consumer_partition_floors",
        )
        assert await relations(empty_connection) == after_first

    async def test_accepts_a_connection_a_pool_and_connection_settings(
        self, postgres_database: ConnectionInfo, postgres_pool: Pool
    ) -> None:
        async with await AsyncConnection.connect(
            postgres_database.conninfo
        ) as connection:
            on_connection = await migrate(connection)
        on_pool = await migrate(postgres_pool)
        on_settings = await migrate(postgres_database.connection_settings())

        for result in (on_connection, on_pool, on_settings):
            assert not result.changed
            assert result.tables == (
                "events",
                "projections",
                "subscribers",
                "subscriptions",
                "consumer_claims",
                "consumer_checkpoints",
                "consumer_dead_letters",
                "projection_versions",
                "consumer_partitionings",
                "consumer_partition_floors",
            )

    async def test_nodes_migrating_at_once_do_not_race(
        self, empty_database: ConnectionInfo
    ) -> None:
        results = await asyncio.gather(
            *(migrate(empty_database.conninfo) for _ in range(6))
        )

        creators = [result for result in results if result.created_tables]
        assert len(creators) == 1
        assert creators[0].created_tables == (
            "events",
            "projections",
            "subscribers",
            "subscriptions",
            "consumer_claims",
            "consumer_checkpoints",
            "consumer_dead_letters",
            "projection_versions",
            "consumer_partitionings",
            "consumer_partition_floors",
        )

    async def test_keeps_a_compatible_existing_table_and_adds_its_indexes(
        self, empty_database: ConnectionInfo, empty_connection: AsyncConnection[Any]
    ) -> None:
        await empty_connection.execute(UPSTREAM_STYLE_EVENTS_TABLE)
        await empty_connection.execute(
            "INSERT INTO events (id, name, stream, category, position, payload, "
            "observed_at, occurred_at) "
            "VALUES ('e1', 'placed', 's', 'c', 0, '{}', now(), now())"
        )

        result = await migrate(empty_database.conninfo)

        assert "events" not in result.created_tables
        assert "events_sequence_number_key" in result.created_indexes
        cursor = await empty_connection.execute("SELECT id FROM events")
        assert await cursor.fetchall() == [("e1",)]

    async def test_rejects_an_events_table_with_a_wrong_column_type(
        self, empty_database: ConnectionInfo, empty_connection: AsyncConnection[Any]
    ) -> None:
        await empty_connection.execute(
            UPSTREAM_STYLE_EVENTS_TABLE.replace("payload JSONB", "payload TEXT")
        )

        with pytest.raises(SchemaIncompatibleError) as raised:
            await migrate(empty_database.conninfo)

        message = str(raised.value)
        assert "table 'events' exists but is incompatible" in message
        assert "column 'payload' has type text, expected jsonb" in message
        assert "point eventcomposition at another database" in message
        assert raised.value.tables == ("events",)
        assert isinstance(raised.value, EventCompositionError)
        assert not await table_exists(empty_connection, "projections")

    async def test_rejects_a_required_column_logicblocks_never_writes(
        self, empty_database: ConnectionInfo, empty_connection: AsyncConnection[Any]
    ) -> None:
        # The events table of logicblocks after 0.1.11 has this column; 0.1.11's
        # inserts would fail on it.
        await empty_connection.execute(UPSTREAM_STYLE_EVENTS_TABLE)
        await empty_connection.execute(
            "ALTER TABLE events ADD COLUMN metadata JSONB NOT NULL"
        )

        with pytest.raises(SchemaIncompatibleError) as raised:
            await migrate(empty_database.conninfo)

        assert "column 'metadata' is NOT NULL without a default" in str(raised.value)
        assert raised.value.tables == ("events",)

    async def test_rejects_a_table_without_the_key_its_upserts_need(
        self, empty_database: ConnectionInfo, empty_connection: AsyncConnection[Any]
    ) -> None:
        await empty_connection.execute(
            "CREATE TABLE projections (id TEXT NOT NULL, name TEXT NOT NULL, "
            "source JSONB NOT NULL, state JSONB NOT NULL, metadata JSONB NOT NULL)"
        )

        with pytest.raises(SchemaIncompatibleError) as raised:
            await migrate(empty_database.conninfo)

        assert raised.value.tables == ("projections",)
        assert "no primary key or unique index on exactly (id, name)" in str(
            raised.value
        )

    async def test_names_an_incompatible_checkpoint_table(
        self, empty_database: ConnectionInfo, empty_connection: AsyncConnection[Any]
    ) -> None:
        await empty_connection.execute(
            'CREATE TABLE consumer_checkpoints ("group" TEXT NOT NULL, '
            "source TEXT NOT NULL, sequence_number TEXT NOT NULL, "
            'updated_at TIMESTAMPTZ NOT NULL, PRIMARY KEY ("group", source))'
        )

        with pytest.raises(SchemaIncompatibleError) as raised:
            await migrate(empty_database.conninfo)

        assert raised.value.tables == ("consumer_checkpoints",)
        assert "column 'sequence_number' has type text, expected bigint" in str(
            raised.value
        )
        assert not await table_exists(empty_connection, "events")

    async def test_names_a_dead_letter_table_without_its_key(
        self, empty_database: ConnectionInfo, empty_connection: AsyncConnection[Any]
    ) -> None:
        await migrate(empty_database.conninfo)
        await empty_connection.execute(
            "ALTER TABLE consumer_dead_letters "
            "DROP CONSTRAINT consumer_dead_letters_pkey"
        )

        with pytest.raises(SchemaIncompatibleError) as raised:
            await migrate(empty_database.conninfo)

        assert raised.value.tables == ("consumer_dead_letters",)
        assert (
            "no primary key or unique index on exactly (group, source, "
            "sequence_number), which eventcomposition relies on" in str(raised.value)
        )

    async def test_adds_the_stream_columns_to_an_older_dead_letter_table(
        self, empty_database: ConnectionInfo, empty_connection: AsyncConnection[Any]
    ) -> None:
        await migrate(empty_database.conninfo)
        await empty_connection.execute(
            "ALTER TABLE consumer_dead_letters DROP COLUMN stream, DROP COLUMN waiting"
        )
        await empty_connection.execute(
            "INSERT INTO consumer_dead_letters VALUES "
            "('g', 'orders', 7, 'e-7', 'ValueError: no', 3, now())"
        )

        first = await migrate(empty_database.conninfo)
        again = await migrate(empty_database.conninfo)

        assert not first.changed
        assert not again.changed
        columns = await column_types(empty_connection, "consumer_dead_letters")
        assert (columns["stream"], columns["waiting"]) == ("text", "boolean")
        cursor = await empty_connection.execute(
            "SELECT stream, waiting FROM consumer_dead_letters"
        )
        assert await cursor.fetchall() == [("", False)]

    async def test_names_an_incompatible_claims_table(
        self, empty_database: ConnectionInfo, empty_connection: AsyncConnection[Any]
    ) -> None:
        await empty_connection.execute(
            'CREATE TABLE consumer_claims ("group" TEXT NOT NULL, source TEXT NOT NULL, '
            'holder TEXT NOT NULL, PRIMARY KEY ("group", source))'
        )

        with pytest.raises(SchemaIncompatibleError) as raised:
            await migrate(empty_database.conninfo)

        assert raised.value.tables == ("consumer_claims",)
        assert "column 'epoch' is missing" in str(raised.value)
        assert "column 'holder' is NOT NULL without a default" in str(raised.value)

    async def test_unreachable_server_raises_a_migration_error(
        self, postgres_database: ConnectionInfo
    ) -> None:
        missing = postgres_database.for_database("no_such_database_here")

        with pytest.raises(SchemaMigrationError, match="could not connect"):
            await migrate(missing.conninfo)

    def test_schema_sql_is_the_ddl_of_every_owned_object(self) -> None:
        ddl = schema_sql()

        assert "CREATE EXTENSION IF NOT EXISTS pg_trgm" in ddl
        for table in OWNED_TABLES:
            assert f"CREATE TABLE IF NOT EXISTS {table.name} (" in ddl
            for index in table.indexes:
                assert f"INDEX IF NOT EXISTS {index}\n" in ddl


class TestLogicblocksAdaptersOnTheMigratedSchema:
    async def test_event_store_publishes_and_reads_back(
        self, postgres_pool: Pool
    ) -> None:
        store = EventStore(
            adapter=PostgresEventStorageAdapter(connection_source=postgres_pool)
        )
        stream = store.stream(category="orders", stream="order-1")

        published = await stream.publish(
            events=[
                NewEvent(name="placed", payload={"total": 10}),
                NewEvent(name="paid", payload={"amount": 10}),
            ]
        )
        streams: dict[str, StreamPublishDefinition[str, JsonValue]] = {
            "order-1": {"events": [NewEvent(name="shipped", payload={})]},
            "order-2": {"events": [NewEvent(name="placed", payload={"total": 3})]},
        }
        by_category = await store.category(category="orders").publish(streams=streams)

        assert [event.position for event in published] == [0, 1]
        assert [event.position for event in by_category["order-1"]] == [2]
        assert [event.position for event in by_category["order-2"]] == [0]
        read = [event async for event in stream.iterate()]
        assert [(e.name, e.position, e.payload) for e in read] == [
            ("placed", 0, {"total": 10}),
            ("paid", 1, {"amount": 10}),
            ("shipped", 2, {}),
        ]
        assert read[0].id == published[0].id
        log = [event async for event in store.log().iterate()]
        assert len(log) == 4
        sequence_numbers = [event.sequence_number for event in log]
        assert sequence_numbers == sorted(set(sequence_numbers))
        latest = await stream.latest()
        assert latest is not None
        assert latest.name == "shipped"

    async def test_projection_store_saves_loads_and_searches_by_similarity(
        self, postgres_pool: Pool
    ) -> None:
        projections = ProjectionStore(
            adapter=PostgresProjectionStorageAdapter(connection_source=postgres_pool)
        )
        titles = {"a1": "postgres tuning", "a2": "event sourcing", "a3": "postgresql"}
        for article_id, title in titles.items():
            await projections.save(
                projection=Projection(
                    id=article_id,
                    name="article",
                    source=StreamIdentifier(category="articles", stream=article_id),
                    state={"title": title, "kind": "post"},
                    metadata={"version": 1},
                )
            )
        await projections.save(
            projection=Projection(
                id="a2",
                name="article",
                source=StreamIdentifier(category="articles", stream="a2"),
                state={"title": "event sourcing", "kind": "draft"},
                metadata={"version": 2},
            )
        )

        loaded = await projections.load(
            id="a2", name="article", state_type=dict, metadata_type=dict
        )
        located = await projections.locate(
            source=StreamIdentifier(category="articles", stream="a1"), name="article"
        )
        found = await projections.search(
            filters=[FilterClause(Operator.EQUAL, Path("state", "kind"), "post")],
            sort=SortClause(
                fields=[
                    SortField(
                        field=Similarity(
                            alias="score",
                            left=Path("state", "title"),
                            right="postgresql",
                        ),
                        order=SortOrder.DESC,
                    )
                ]
            ),
            paging=OffsetPagingClause(item_count=10),
        )

        assert loaded is not None
        assert loaded.state == {"title": "event sourcing", "kind": "draft"}
        assert loaded.metadata == {"version": 2}
        assert located is not None
        assert located.id == "a1"
        assert [projection.id for projection in found] == ["a3", "a1"]

    async def test_subscriber_state_store_adds_heartbeats_lists_and_removes(
        self, postgres_pool: Pool
    ) -> None:
        start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
        clock = StaticClock(start)
        store = PostgresEventSubscriberStateStore(
            node_id="node-a", connection_source=postgres_pool, clock=clock
        )
        first = CapturingSubscriber("billing", "sub-1", [CategoryIdentifier("orders")])
        second = CapturingSubscriber(
            "shipping", "sub-2", [CategoryIdentifier("orders")]
        )

        await store.add(first)
        await store.add(second)
        await store.add(first)
        listed = await store.list()
        billing = await store.list(subscriber_group="billing")
        clock.set(start + timedelta(seconds=30))
        await store.heartbeat(first)
        alive = await store.list(max_time_since_last_seen=timedelta(seconds=10))
        await store.purge(max_time_since_last_seen=timedelta(seconds=10))
        after_purge = await store.list()
        await store.remove(first)
        after_remove = await store.list()

        assert sorted(state.id for state in listed) == ["sub-1", "sub-2"]
        assert [(s.group, s.id, s.node_id) for s in billing] == [
            ("billing", "sub-1", "node-a")
        ]
        assert list(billing[0].subscription_requests) == [CategoryIdentifier("orders")]
        assert billing[0].last_seen == start
        assert [(s.id, s.last_seen) for s in alive] == [
            ("sub-1", start + timedelta(seconds=30))
        ]
        assert [state.id for state in after_purge] == ["sub-1"]
        assert after_remove == []

    async def test_subscription_state_store_applies_changes_and_lists(
        self, postgres_pool: Pool
    ) -> None:
        store = PostgresEventSubscriptionStateStore(
            node_id="node-a", connection_source=postgres_pool
        )

        def change(
            kind: EventSubscriptionStateChangeType,
            id: str,
            sources: Sequence[EventSourceIdentifier],
        ) -> EventSubscriptionStateChange:
            return EventSubscriptionStateChange(
                type=kind,
                subscription=EventSubscriptionState(
                    group="billing", id=id, node_id="node-a", event_sources=sources
                ),
            )

        orders = StreamIdentifier(category="orders", stream="order-1")
        refunds = CategoryIdentifier("refunds")
        add, replace, remove = (
            EventSubscriptionStateChangeType.ADD,
            EventSubscriptionStateChangeType.REPLACE,
            EventSubscriptionStateChangeType.REMOVE,
        )
        await store.apply(
            [change(add, "sub-1", [orders]), change(add, "sub-2", [orders])]
        )
        added = await store.list()
        await store.apply(
            [change(replace, "sub-1", [orders, refunds]), change(remove, "sub-2", [])]
        )
        changed = await store.list()
        with pytest.raises(ValueError, match="existing subscription"):
            await store.apply([change(add, "sub-1", [])])
        after_duplicate = await store.list()

        assert sorted((s.id, tuple(s.event_sources)) for s in added) == [
            ("sub-1", (orders,)),
            ("sub-2", (orders,)),
        ]
        assert [(s.group, s.id, s.node_id, list(s.event_sources)) for s in changed] == [
            ("billing", "sub-1", "node-a", [orders, refunds])
        ]
        assert after_duplicate == changed


@pytest.mark.parametrize("run", ["first", "second"])
async def test_each_test_sees_only_its_own_events(
    run: str, postgres_pool: Pool
) -> None:
    store = EventStore(
        adapter=PostgresEventStorageAdapter(connection_source=postgres_pool)
    )
    stream = store.stream(category="shared", stream="same-stream")

    await stream.publish(events=[NewEvent(name="written", payload={"run": run})])

    events = [event async for event in store.log().iterate()]
    assert [(e.stream, e.position, e.payload) for e in events] == [
        ("same-stream", 0, {"run": run})
    ]


async def test_connection_settings_of_a_test_database_work_with_logicblocks(
    postgres_database: ConnectionInfo,
) -> None:
    adapter = PostgresEventStorageAdapter(
        connection_source=postgres_database.connection_settings()
    )
    await adapter.open()
    try:
        store = EventStore(adapter=adapter)
        await store.stream(category="c", stream="s").publish(
            events=[NewEvent(name="n", payload={})]
        )
    finally:
        await adapter.close()

    with psycopg.connect(postgres_database.conninfo) as connection:
        row = connection.execute("SELECT count(*) FROM events").fetchone()
    assert row == (1,)
