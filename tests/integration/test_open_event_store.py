"""``open_event_store``: an open event store for a script, without a node."""

from pathlib import Path

from logicblocks.event.types import NewEvent
from psycopg import AsyncConnection

from eventcomposition.containers import open_event_store
from eventcomposition.settings import load_settings
from eventcomposition.testing.containers import postgres_overrides
from eventcomposition.testing.postgres import ConnectionInfo

SETTINGS_DIR = Path(__file__).resolve().parents[2] / "settings"


async def test_a_script_publishes_to_postgres_and_the_pool_is_closed_after(
    postgres_database: ConnectionInfo,
) -> None:
    settings = load_settings(
        "test", settings_dir=SETTINGS_DIR, **postgres_overrides(postgres_database)
    )

    async with open_event_store(settings) as store:
        await store.stream(category="orders", stream="c-1").publish(
            events=[NewEvent(name="order-placed", payload={"amount_cents": 5})]
        )
        read = [
            event.name
            async for event in store.stream(category="orders", stream="c-1").iterate()
        ]

    assert read == ["order-placed"]
    async with await AsyncConnection.connect(postgres_database.conninfo) as connection:
        cursor = await connection.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert await cursor.fetchone() == (0,)


async def test_in_memory_a_script_gets_a_store_of_its_own() -> None:
    settings = load_settings("test", settings_dir=SETTINGS_DIR)

    async with open_event_store(settings) as store:
        await store.stream(category="orders", stream="c-1").publish(
            events=[NewEvent(name="order-placed", payload={})]
        )
        latest = await store.stream(category="orders", stream="c-1").latest()

    assert latest is not None
    assert latest.name == "order-placed"
