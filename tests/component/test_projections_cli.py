"""``eventcomposition projections ...``, run in process through ``main``."""

import asyncio
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
from dependency_injector import providers
from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.types import CategoryIdentifier, NewEvent, StoredEvent
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.cli import main
from eventcomposition.cli.projections import describe_progress, estimate_eta
from eventcomposition.consumers import BatchProcessor, Transaction
from eventcomposition.containers import EventRuntimeContainer
from eventcomposition.projections import (
    ProjectionCatalog,
    RebuildProgress,
    VersionedProjection,
)
from eventcomposition.runtime import SubscriptionConsumerRegistration
from eventcomposition.schema import Migration
from eventcomposition.testing.postgres import ConnectionInfo

SETTINGS_DIR = str(Path(__file__).resolve().parents[2] / "settings")
SETTINGS = ["--env", "test", "--settings-dir", SETTINGS_DIR]
TOTALS = Migration("totals", "CREATE TABLE totals (id text PRIMARY KEY, n bigint)")
ITEMS = Migration("items", "CREATE TABLE items (n bigint, rebuilding boolean)")


class Items(BatchProcessor):
    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        for event in events:
            assert isinstance(event.payload, dict)
            await transaction.connection.execute(
                "INSERT INTO items VALUES (%s, %s)",
                [event.payload["n"], transaction.rebuilding],
            )


class ItemsApp(EventRuntimeContainer):
    consumers = providers.List(
        providers.Factory(
            SubscriptionConsumerRegistration,
            consumer=providers.Factory(
                EventRuntimeContainer.versioned_consumer,
                projection=VersionedProjection(
                    group="items",
                    processor_for=lambda version: Items(),
                    migrations=[ITEMS],
                ),
                subscription_requests=[CategoryIdentifier(category="items-0")],
            ),
        )
    )


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """``dead-letters retry`` configures logging onto pytest's captured stderr,
    which closes after the test: later tests must not log there."""
    structlog_config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**structlog_config)
    root.handlers, root.level = handlers, level


@pytest.fixture
def database_environment(
    postgres_database: ConnectionInfo, monkeypatch: pytest.MonkeyPatch
) -> ConnectionInfo:
    values = {
        "HOST": postgres_database.host,
        "PORT": str(postgres_database.port),
        "DATABASE": postgres_database.dbname,
        "USER": postgres_database.user,
        "PASSWORD": postgres_database.password,
    }
    for key, value in values.items():
        monkeypatch.setenv(f"EVENTCOMPOSITION_STORAGE__POSTGRES__{key}", value)
    monkeypatch.setenv("EVENTCOMPOSITION_STORAGE__TYPE", "postgres")
    return postgres_database


async def first_version(database: ConnectionInfo) -> None:
    """What a node declaring the projection does when it first starts."""
    async with AsyncConnectionPool[AsyncConnection[Any]](
        database.conninfo, min_size=1, max_size=2, open=False
    ) as pool:
        await ProjectionCatalog(pool).ensure_initial("totals", "totals", [TOTALS])
        async with pool.connection() as connection:
            await connection.execute("INSERT INTO totals_v1.totals VALUES ('a', 1)")


async def count(database: ConnectionInfo, table: str) -> int:
    async with await AsyncConnection.connect(database.conninfo) as connection:
        cursor = await connection.execute(f"SELECT count(*) FROM {table}")
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["projections", *argv, *SETTINGS])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_the_projection_commands(
    database_environment: ConnectionInfo, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "list") == (0, "no versioned projections\n", "")
    asyncio.run(first_version(database_environment))

    status, out, _ = run(capsys, "list")
    assert status == 0
    assert out.splitlines()[-1].split() == ["totals", "totals", "v1", "-", "-"]

    status, out, _ = run(capsys, "rebuild", "totals")
    assert status == 0
    assert out.startswith("rebuilding 'totals' as version 2 in schema totals_v2")
    status, _, err = run(capsys, "rebuild", "totals")
    assert status == 1
    assert "a rebuild of 'totals' to version 2 is already running" in err
    assert len(err.strip().splitlines()) == 1

    status, out, _ = run(capsys, "status", "totals")
    assert status == 0
    assert "totals v2: preparing its schema" in out
    assert "v2 preparing" in run(capsys, "list")[1]

    status, _, err = run(capsys, "drop", "totals", "--version", "1")
    assert status == 1
    assert "version 1 of 'totals' is live" in err
    status, out, _ = run(capsys, "cancel", "totals")
    assert (status, out.strip()) == (
        0,
        "cancelled the rebuild of 'totals' to version 2; dropped schema totals_v2",
    )

    status, _, err = run(capsys, "reset", "totals")
    assert status == 1
    assert "pass --yes" in err
    assert asyncio.run(count(database_environment, "totals.totals")) == 1
    status, out, _ = run(capsys, "reset", "totals", "--yes")
    assert status == 0
    assert asyncio.run(count(database_environment, "totals.totals")) == 0

    status, _, err = run(capsys, "status", "nobody")
    assert status == 1
    assert "no versioned projection of group 'nobody' (known: totals)" in err


def test_progress_lines_and_their_estimate() -> None:
    progress = RebuildProgress(
        group="totals",
        version=2,
        live_version=1,
        progress=0.5,
        behind=1200,
        caught_up=False,
        prepared=True,
    )
    assert describe_progress(progress, 12.4) == (
        "totals v2: 50.0% of live v1, 1200 sequence numbers behind, about 12 s to go"
    )
    assert estimate_eta((0.0, 0.25), (10.0, 0.5)) == 20.0
    assert estimate_eta((0.0, 0.5), (10.0, 0.5)) is None


async def park_in_version_2(database: ConnectionInfo) -> None:
    """Version 2 of the test app's projection, being built, with one parked event."""
    async with AsyncConnectionPool[AsyncConnection[Any]](
        database.conninfo, min_size=1, max_size=2, open=False
    ) as pool:
        catalog = ProjectionCatalog(pool)
        await catalog.ensure_initial("items", "items", [ITEMS])
        await catalog.prepare(await catalog.request_rebuild("items"), [ITEMS])
        store = EventStore(adapter=PostgresEventStorageAdapter(connection_source=pool))
        stored = await store.stream(category="items-0", stream="s").publish(
            events=[NewEvent(name="added", payload={"n": 7})]
        )
        async with pool.connection() as connection:
            await connection.execute(
                "INSERT INTO consumer_dead_letters VALUES "
                "('items@v2', 'items-0', %s, %s, 'boom', 3, now())",
                [stored[0].sequence_number, stored[0].id],
            )


def test_dead_letters_of_a_version_are_retried_with_its_processor(
    database_environment: ConnectionInfo, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(park_in_version_2(database_environment))
    capsys.readouterr()

    status = main(
        [
            "dead-letters",
            "retry",
            "--app",
            f"{__name__}:ItemsApp",
            "--group",
            "items@v2",
            *SETTINGS,
        ]
    )

    assert status == 0
    assert "items@v2: applied 1, still parked 0" in capsys.readouterr().out
    assert (
        asyncio.run(count(database_environment, "items_v2.items WHERE rebuilding")) == 1
    )
    assert asyncio.run(count(database_environment, "items_v1.items")) == 0
