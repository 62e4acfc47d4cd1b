"""``eventcomposition db migrate --app``: the schema, then the application's own."""

import sys
from pathlib import Path
from textwrap import dedent

from psycopg import AsyncConnection

from eventcomposition.testing.postgres import ConnectionInfo
from eventcomposition.testing.processes import node_environment, run_to_completion

MIGRATE = [sys.executable, "-m", "eventcomposition", "db", "migrate"]


def write_application(folder: Path, *migration_sql: str) -> None:
    """A module ``shop`` whose container declares one SQL file per statement."""
    migrations = folder / "migrations"
    migrations.mkdir(exist_ok=True)
    for number, statement in enumerate(migration_sql, start=1):
        (migrations / f"{number:04d}.sql").write_text(statement)
    (folder / "shop.py").write_text(
        dedent(
            """
            from pathlib import Path

            from dependency_injector import providers

            from eventcomposition.containers import EventRuntimeContainer
            from eventcomposition.schema import sql_migrations

            HERE = Path(__file__).parent


            class ShopContainer(EventRuntimeContainer):
                migrations = providers.Callable(sql_migrations, HERE / "migrations")
            """
        )
    )


async def order_tables(database: ConnectionInfo) -> set[str]:
    async with await AsyncConnection.connect(database.conninfo) as connection:
        cursor = await connection.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'shop_%'"
        )
        return {str(row[0]) for row in await cursor.fetchall()}


async def test_the_application_migrations_run_once_after_the_schema(
    postgres_database: ConnectionInfo, tmp_path: Path
) -> None:
    write_application(
        tmp_path,
        "CREATE TABLE shop_orders (id text PRIMARY KEY)",
        "CREATE TABLE shop_totals (customer text PRIMARY KEY)",
    )
    environment = node_environment(postgres_database)
    command = [*MIGRATE, "--app", "shop:ShopContainer"]

    first = run_to_completion(command, env=environment, cwd=tmp_path)
    second = run_to_completion(command, env=environment, cwd=tmp_path)

    assert first.returncode == 0, first.stderr
    assert first.stdout[-1] == "applied application migrations: 0001.sql, 0002.sql"
    assert second.returncode == 0, second.stderr
    assert second.stdout[-1] == "application migrations up to date (2 declared)"
    assert await order_tables(postgres_database) == {"shop_orders", "shop_totals"}


async def test_a_failing_application_migration_is_named_and_rolled_back(
    postgres_database: ConnectionInfo, tmp_path: Path
) -> None:
    write_application(
        tmp_path,
        "CREATE TABLE shop_orders (id text PRIMARY KEY)",
        "CREATE TABLE shop_half (id int); INSERT INTO shop_missing VALUES (1)",
    )

    completed = run_to_completion(
        [*MIGRATE, "--app", "shop:ShopContainer"],
        env=node_environment(postgres_database),
        cwd=tmp_path,
    )

    assert completed.returncode == 1
    assert completed.stderr == [
        "eventcomposition: error: application migration '0002.sql' failed and was "
        'rolled back: relation "shop_missing" does not exist; 0001.sql applied '
        "before it; fix it and migrate again"
    ]
    assert await order_tables(postgres_database) == {"shop_orders"}
