"""``eventcomposition db migrate``: apply the PostgreSQL schema (idempotent), then
the application's own migrations."""

import argparse
import asyncio
from collections.abc import Sequence

from ..containers import application_migrations
from ..database import wait_for_database
from ..schema import MigrationDeclaration, migrate
from ..settings import PostgresSettings, load_settings
from .options import add_settings_arguments


def add_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    parser = subparsers.add_parser("db", help="manage the PostgreSQL schema")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    migrate_parser = actions.add_parser(
        "migrate",
        help="create the tables, indexes and extension the nodes need (idempotent)",
    )
    migrate_parser.add_argument(
        "--app",
        help="module:attribute of the application's container: its 'migrations' "
        "are applied after the eventcomposition schema",
    )
    add_settings_arguments(migrate_parser)
    migrate_parser.set_defaults(func=lambda args: asyncio.run(apply_schema(args)))


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
