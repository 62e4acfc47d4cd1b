"""An application's own migrations, applied by ``migrate`` after the schema."""

import asyncio
from pathlib import Path
from typing import Any

import pytest
from psycopg import AsyncConnection

from eventcomposition.schema import (
    ApplicationMigrationError,
    Migration,
    migrate,
    sql_migrations,
)
from eventcomposition.testing.postgres import ConnectionInfo


async def tables(database: ConnectionInfo) -> set[str]:
    async with await AsyncConnection.connect(database.conninfo) as connection:
        cursor = await connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        )
        return {str(row[0]) for row in await cursor.fetchall()}


async def recorded(database: ConnectionInfo) -> list[str]:
    async with await AsyncConnection.connect(database.conninfo) as connection:
        cursor = await connection.execute(
            "SELECT name FROM application_migrations ORDER BY applied_at, name"
        )
        return [str(row[0]) for row in await cursor.fetchall()]


async def add_total_column(connection: AsyncConnection[Any]) -> None:
    await connection.execute("ALTER TABLE order_totals ADD COLUMN total bigint")


def sql_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001-order-totals.sql").write_text(
        "CREATE TABLE order_totals (customer text PRIMARY KEY);"
    )
    (folder / "0002-index.sql").write_text(
        "CREATE TABLE audit (id int); CREATE INDEX audit_id ON audit (id);"
    )
    return folder


async def test_each_migration_is_applied_once_in_order(
    postgres_database: ConnectionInfo, tmp_path: Path
) -> None:
    migrations = [
        *sql_migrations(sql_folder(tmp_path)),
        Migration("0003-total", add_total_column),
    ]

    first = await migrate(postgres_database.conninfo, migrations)
    second = await migrate(postgres_database.conninfo, migrations)

    assert first.applied_migrations == (
        "0001-order-totals.sql",
        "0002-index.sql",
        "0003-total",
    )
    assert second.applied_migrations == ()
    assert not second.changed
    assert {"order_totals", "audit", "application_migrations"} <= await tables(
        postgres_database
    )
    assert sorted(await recorded(postgres_database)) == sorted(first.applied_migrations)


async def test_a_failing_migration_is_rolled_back_and_named(
    postgres_database: ConnectionInfo,
) -> None:
    good = Migration("0001-good", "CREATE TABLE good (id int)")
    failing = Migration(
        "0002-failing", "CREATE TABLE half_done (id int); SELECT no_such_column"
    )
    after = Migration("0003-after", "CREATE TABLE after_it (id int)")

    with pytest.raises(ApplicationMigrationError) as raised:
        await migrate(postgres_database.conninfo, [good, failing, after])

    assert raised.value.migration == "0002-failing"
    assert str(raised.value).startswith(
        "application migration '0002-failing' failed and was rolled back: "
        'column "no_such_column" does not exist; 0001-good applied before it'
    )
    found = await tables(postgres_database)
    assert "good" in found
    assert "half_done" not in found
    assert "after_it" not in found
    assert await recorded(postgres_database) == ["0001-good"]

    fixed = Migration("0002-failing", "CREATE TABLE half_done (id int)")
    result = await migrate(postgres_database.conninfo, [good, fixed, after])
    assert result.applied_migrations == ("0002-failing", "0003-after")


async def test_a_failing_callable_is_rolled_back_and_named(
    postgres_database: ConnectionInfo,
) -> None:
    async def half_then_fail(connection: AsyncConnection[Any]) -> None:
        await connection.execute("CREATE TABLE half (id int)")
        raise ValueError("the backfill found a bad row")

    with pytest.raises(ApplicationMigrationError, match="'backfill' failed") as raised:
        await migrate(
            postgres_database.conninfo, [Migration("backfill", half_then_fail)]
        )

    assert "the backfill found a bad row" in str(raised.value)
    assert "half" not in await tables(postgres_database)


async def test_repeated_names_are_refused_before_anything_runs(
    postgres_database: ConnectionInfo,
) -> None:
    twice = [Migration("a", "CREATE TABLE a1 (id int)"), Migration("a", "SELECT 1")]

    with pytest.raises(ApplicationMigrationError, match="'a' is declared twice"):
        await migrate(postgres_database.conninfo, twice)

    assert "a1" not in await tables(postgres_database)


async def test_concurrent_migrations_apply_each_once(
    postgres_database: ConnectionInfo,
) -> None:
    migrations = [Migration("0001-counter", "CREATE TABLE counter (id int)")]

    results = await asyncio.gather(
        *(migrate(postgres_database.conninfo, migrations) for _ in range(4))
    )

    assert sorted(result.applied_migrations for result in results) == [
        (),
        (),
        (),
        ("0001-counter",),
    ]
