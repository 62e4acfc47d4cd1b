"""``eventcomposition db migrate``: apply the PostgreSQL schema (idempotent), then
the application's own migrations."""

import argparse
import asyncio
from typing import Any

from ..containers import postgres_location
from ..database import wait_for_database
from ..schema import MigrationDeclaration, migrate
from ..settings import PostgresSettings, load_settings
from .app import container_for
from .run import add_settings_arguments


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


async def reachable_postgres(args: argparse.Namespace) -> tuple[PostgresSettings, str]:
    """The configured PostgreSQL settings and location, once the server answers."""
    postgres = load_settings(args.env, settings_dir=args.settings_dir).storage.postgres
    where = postgres_location(postgres)
    await wait_for_database(
        postgres.conninfo(), where=where, connect_timeout=postgres.connect_timeout
    )
    return postgres, where


def application_migrations(args: argparse.Namespace) -> list[MigrationDeclaration]:
    """The migrations the ``--app`` container declares (none without one)."""
    if not args.app:
        return []
    settings = load_settings(args.env, settings_dir=args.settings_dir)
    container: Any = container_for(args.app, settings)
    provider = getattr(container, "migrations", None)
    return list(provider()) if provider is not None else []


async def apply_schema(args: argparse.Namespace) -> int:
    migrations = application_migrations(args)
    postgres, where = await reachable_postgres(args)
    result = await migrate(postgres.conninfo(), migrations)
    created = [
        *result.created_extensions,
        *result.created_tables,
        *result.created_indexes,
    ]
    if created:
        print(f"migrated {where}: created {', '.join(created)}")
    else:
        print(f"{where} is up to date: {', '.join(result.tables)}")
    if migrations:
        print(
            f"applied application migrations: {', '.join(result.applied_migrations)}"
            if result.applied_migrations
            else f"application migrations up to date ({len(migrations)} declared)"
        )
    return 0
