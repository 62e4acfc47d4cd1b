"""The PostgreSQL schema eventcomposition owns for the logicblocks 0.1.11 adapters.

The logicblocks wheel ships no DDL; ``migrate`` creates (idempotently) and verifies
the ``events``, ``projections``, ``subscribers`` and ``subscriptions`` tables, their
indexes and the ``pg_trgm`` extension, the tables of transactional consumers, and
the trigger that NOTIFYs ``NOTIFY_CHANNEL`` with the categories each inserting
statement wrote. ``schema_sql`` returns the same DDL for operators who prefer to
apply it themselves. An application's own migrations (``Migration``,
``sql_migrations``) run after it: ``migrate(pool, application=...)``.
"""

from .application import (
    MIGRATIONS_TABLE,
    ApplicationMigrationError,
    Migration,
    MigrationDeclaration,
    sql_migrations,
)
from .errors import SchemaError, SchemaIncompatibleError, SchemaMigrationError
from .migrate import ConnectionSource, MigrationResult, migrate, schema_sql
from .notifications import NOTIFY_CHANNEL, NOTIFY_WILDCARD
from .tables import NODE_PRIVILEGES, OWNED_TABLES, ExpectedColumn, ExpectedTable

__all__ = [
    "MIGRATIONS_TABLE",
    "NODE_PRIVILEGES",
    "NOTIFY_CHANNEL",
    "NOTIFY_WILDCARD",
    "OWNED_TABLES",
    "ApplicationMigrationError",
    "ConnectionSource",
    "ExpectedColumn",
    "ExpectedTable",
    "Migration",
    "MigrationDeclaration",
    "MigrationResult",
    "SchemaError",
    "SchemaIncompatibleError",
    "SchemaMigrationError",
    "migrate",
    "schema_sql",
    "sql_migrations",
]
