"""``eventcomposition db migrate``: apply the PostgreSQL schema (idempotent), then
the application's own migrations."""

import argparse
from collections.abc import Sequence

from ..containers import application_migrations
from ..database import wait_for_database
from ..schema import MigrationDeclaration, migrate
from ..settings import PostgresSettings, load_settings


async def reachable_postgres(args: argparse.Namespace) -> PostgresSettings:
    """The configured PostgreSQL settings, once the server answers."""
    postgres = load_settings(args.env, settings_dir=args.settings_dir).storage.postgres
    await wait_for_database(
        postgres.conninfo(),
        where=postgres.location(),
        connect_timeout=postgres.connect_timeout,
    )
    return postgres


async def prepare_database(
    postgres: PostgresSettings, migrations: Sequence[MigrationDeclaration] = ()
) -> None:
    """Wait for the database (with retries), then apply the schema and
    ``migrations`` (idempotent)."""
    await wait_for_database(
        postgres.conninfo(),
        where=postgres.location(),
        connect_timeout=postgres.connect_timeout,
    )
    await migrate(postgres.conninfo(), migrations)


async def apply_schema(args: argparse.Namespace) -> int:
    migrations = (
        application_migrations(
            args.app, load_settings(args.env, settings_dir=args.settings_dir)
        )
        if args.app
        else []
    )
    postgres = await reachable_postgres(args)
    result = await migrate(postgres.conninfo(), migrations)
    created = [
        *result.created_extensions,
        *result.created_tables,
        *result.created_indexes,
        *result.created_triggers,
    ]
    if created:
        print(f"migrated {postgres.location()}: created {', '.join(created)}")
    else:
        print(f"{postgres.location()} is up to date: {', '.join(result.tables)}")
    if migrations:
        print(
            f"applied application migrations: {', '.join(result.applied_migrations)}"
            if result.applied_migrations
            else f"application migrations up to date ({len(migrations)} declared)"
        )
    return 0
