"""``eventcomposition db migrate``: apply the PostgreSQL schema (idempotent)."""

import argparse
import asyncio

from ..database import wait_for_database
from ..schema import migrate
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


async def prepare_database(postgres: PostgresSettings) -> None:
    """Wait for the database (with retries), then apply the schema (idempotent)."""
    await wait_for_database(
        postgres.conninfo(),
        where=postgres.location(),
        connect_timeout=postgres.connect_timeout,
    )
    await migrate(postgres.conninfo())


async def apply_schema(args: argparse.Namespace) -> int:
    postgres = await reachable_postgres(args)
    result = await migrate(postgres.conninfo())
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
    return 0
