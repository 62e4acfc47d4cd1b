"""Support for the tests of eventcomposition and of applications built on it.

PostgreSQL: ``ThrowawayPostgres`` (a private server),
``postgres_server_from_environment`` and the pytest fixtures in
``eventcomposition.testing.pytest_plugin``.
"""

from .postgres import (
    DATABASE_URL_VARIABLE,
    ConnectionInfo,
    ExternalPostgres,
    PostgresBinaries,
    PostgresServer,
    PostgresServerError,
    PostgresUnavailableError,
    ThrowawayPostgres,
    create_database,
    drop_database,
    find_postgres_binaries,
    postgres_server_from_environment,
    unique_database_name,
)

__all__ = [
    "DATABASE_URL_VARIABLE",
    "ConnectionInfo",
    "ExternalPostgres",
    "PostgresBinaries",
    "PostgresServer",
    "PostgresServerError",
    "PostgresUnavailableError",
    "ThrowawayPostgres",
    "create_database",
    "drop_database",
    "find_postgres_binaries",
    "postgres_server_from_environment",
    "unique_database_name",
]
