"""``eventcomposition db migrate``: apply the PostgreSQL schema (idempotent), then
the application's own migrations."""

import argparse
from collections.abc import Sequence

from ..database import wait_for_database
from ..schema import MigrationDeclaration, MigrationResult, migrate
from ..settings import (
    EventCompositionSettings,
    PostgresSettings,
    environment_variable,
    load_settings,
)
from .errors import CommandError


def postgres_settings(
    settings: EventCompositionSettings, command: str
) -> PostgresSettings:
    """``settings.storage.postgres``, if the settings store in PostgreSQL.

    Raises ``CommandError`` at once when they store in memory (the default
    development environment), rather than trying a server nobody configured.
    """
    if settings.storage.type != "postgres":
        raise CommandError(
            f"{command} needs PostgreSQL, but the {settings.environment!r} settings "
            f"use storage.type = {settings.storage.type}; choose an environment that "
            f"uses PostgreSQL (--env production) or set "
            f"{environment_variable('storage.type')}=postgres"
        )
    return settings.storage.postgres


async def reachable_postgres(
    args: argparse.Namespace, settings: EventCompositionSettings | None = None
) -> PostgresSettings:
    """The configured PostgreSQL settings (of ``settings``, or loaded as ``args``
    say), once the server answers; a ``CommandError`` at once when the settings
    keep storage in memory."""
    if settings is None:
        settings = load_settings(args.env, settings_dir=args.settings_dir)
    postgres = postgres_settings(settings, f"{args.command} {args.action}")
    await wait_for_database(
        postgres.conninfo(),
        where=postgres.location(),
        connect_timeout=postgres.connect_timeout,
    )
    return postgres


async def prepare_database(
    postgres: PostgresSettings, migrations: Sequence[MigrationDeclaration] = ()
) -> MigrationResult:
    """Wait for the database (with retries), then apply the schema and
    ``migrations`` (idempotent)."""
    await wait_for_database(
        postgres.conninfo(),
        where=postgres.location(),
        connect_timeout=postgres.connect_timeout,
    )
    return await migrate(postgres.conninfo(), migrations)


async def apply_schema(args: argparse.Namespace) -> int:
    postgres_settings(
        load_settings(args.env, settings_dir=args.settings_dir), "db migrate"
    )
    from ..containers import application_migrations

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
