"""The PostgreSQL schema eventcomposition owns for the logicblocks 0.1.11 adapters.

The logicblocks wheel ships no DDL; ``migrate`` creates (idempotently) and verifies
the ``events``, ``projections``, ``subscribers`` and ``subscriptions`` tables, their
indexes and the ``pg_trgm`` extension. ``schema_sql`` returns the same DDL for
operators who prefer to apply it themselves.
"""

from .errors import SchemaError, SchemaIncompatibleError, SchemaMigrationError
from .migrate import ConnectionSource, MigrationResult, migrate, schema_sql
from .tables import OWNED_TABLES, ExpectedColumn, ExpectedTable

__all__ = [
    "OWNED_TABLES",
    "ConnectionSource",
    "ExpectedColumn",
    "ExpectedTable",
    "MigrationResult",
    "SchemaError",
    "SchemaIncompatibleError",
    "SchemaMigrationError",
    "migrate",
    "schema_sql",
]
