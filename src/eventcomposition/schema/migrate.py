"""Apply the eventcomposition schema and check the tables it owns."""

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from importlib import resources
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import AsyncConnection, AsyncCursor
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from .application import (
    Migration,
    MigrationDeclaration,
    apply_migrations,
    checked_migrations,
)
from .errors import SchemaIncompatibleError, SchemaMigrationError
from .notifications import (
    NOTIFY_FUNCTION,
    NOTIFY_TRIGGER,
    function_problems,
    trigger_problems,
)
from .tables import OWNED_TABLES, REQUIRED_EXTENSIONS, ExpectedTable

if TYPE_CHECKING:
    # Imported where it is matched: logicblocks' persistence package is not needed
    # by the commands that only read (the schema package is imported with them).
    from logicblocks.event.persistence.postgres import ConnectionSettings

type ConnectionSource = (
    AsyncConnection[Any] | AsyncConnectionPool[Any] | ConnectionSettings | str
)
"""An open connection, an open pool, connection settings or a libpq conninfo/URL."""

# Serialises concurrent migrations of one database (advisory locks are per database).
# The value is arbitrary; it spells "evcomps!" in ASCII.
_MIGRATION_LOCK_KEY = 0x6576636F6D707321

_TABLE_KINDS = {"r": "table", "p": "table", "v": "view", "m": "materialized view"}


def schema_sql() -> str:
    """The DDL ``migrate`` applies, as a script an operator can run with psql."""
    return (
        resources.files(__package__ or "eventcomposition.schema")
        .joinpath("schema.sql")
        .read_text(encoding="utf-8")
    )


@dataclass(frozen=True)
class MigrationResult:
    """What one ``migrate`` call found and created."""

    tables: tuple[str, ...]
    """Every table eventcomposition owns; all of them exist and were verified."""
    created_tables: tuple[str, ...]
    created_indexes: tuple[str, ...]
    created_extensions: tuple[str, ...]
    created_triggers: tuple[str, ...] = ()
    applied_migrations: tuple[str, ...] = ()
    """The application migrations this call applied, in order."""

    @property
    def changed(self) -> bool:
        return bool(
            self.created_tables
            or self.created_indexes
            or self.created_extensions
            or self.created_triggers
            or self.applied_migrations
        )


async def migrate(
    connection_source: ConnectionSource,
    application: Iterable[MigrationDeclaration] = (),
) -> MigrationResult:
    """Create the tables, indexes and extension the logicblocks adapters need and
    the trigger that NOTIFYs the categories written to ``events``, then apply the
    ``application``'s own migrations not applied yet.

    Idempotent: objects that exist are kept (the trigger's function is replaced).
    The schema is applied in one transaction under an advisory lock, so nodes
    migrating one database at once do not race; the application's migrations follow
    under the same lock, each in its own transaction (see
    ``eventcomposition.schema.application``). Tables, the trigger and its function
    that already existed are checked first, and all of them again at the end; one
    that does not fit raises ``SchemaIncompatibleError`` and nothing changes. Any
    other refusal by PostgreSQL raises ``SchemaMigrationError``; a failing
    application migration raises ``ApplicationMigrationError`` naming it.
    """
    from logicblocks.event.persistence.postgres import ConnectionSettings

    migrations = checked_migrations(application)
    match connection_source:
        case AsyncConnection():
            return await _migrate_all(connection_source, migrations)
        case AsyncConnectionPool():
            async with connection_source.connection() as connection:
                return await _migrate_all(connection, migrations)
        case ConnectionSettings():
            conninfo = make_conninfo(
                host=connection_source.host,
                port=connection_source.port,
                dbname=connection_source.dbname,
                user=connection_source.user,
                password=connection_source.password or None,
            )
        case str():
            conninfo = connection_source
    try:
        connection = await AsyncConnection.connect(conninfo)
    except psycopg.Error as error:
        raise SchemaMigrationError(
            f"could not connect to PostgreSQL to migrate the eventcomposition "
            f"schema: {error}; check the host, port, database name and credentials"
        ) from error
    async with connection:
        return await _migrate_all(connection, migrations)


async def _migrate_all(
    connection: AsyncConnection[Any], migrations: Sequence[Migration]
) -> MigrationResult:
    if not migrations:
        return await _migrate(connection)
    async with _migration_lock(connection):
        result = await _migrate(connection)
        applied = await apply_migrations(connection, migrations)
    return replace(result, applied_migrations=applied)


@asynccontextmanager
async def _migration_lock(connection: AsyncConnection[Any]) -> AsyncIterator[None]:
    # A session lock spans the transactions of the schema and of every application
    # migration; the schema's own transaction lock on the same key is re-entrant.
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_lock(%s)", [_MIGRATION_LOCK_KEY])
    try:
        yield
    finally:
        async with connection.transaction():
            await connection.execute(
                "SELECT pg_advisory_unlock(%s)", [_MIGRATION_LOCK_KEY]
            )


async def _migrate(connection: AsyncConnection[Any]) -> MigrationResult:
    owned_objects = [
        name for table in OWNED_TABLES for name in (table.name, *table.indexes)
    ]
    try:
        async with connection.transaction(), connection.cursor() as cursor:
            await cursor.execute(
                "SELECT pg_advisory_xact_lock(%s)", [_MIGRATION_LOCK_KEY]
            )
            # Durable once migrate returns, whatever the server's default: a
            # crash right after must not lose the tables nodes already use.
            await cursor.execute("SET LOCAL synchronous_commit = on")
            existed = await _existing_relations(cursor, owned_objects)
            extensions_before = await _installed_extensions(cursor)

            await _raise_if_incompatible(
                cursor,
                [table for table in OWNED_TABLES if table.name in existed],
                before_migration=True,
            )
            await _raise_if_notify_incompatible(cursor, after_migration=False)
            trigger_existed = await _trigger_exists(cursor)
            await cursor.execute(schema_sql().encode("utf-8"))
            await _raise_if_incompatible(cursor, OWNED_TABLES)
            await _raise_if_notify_incompatible(cursor, after_migration=True)

            exists = await _existing_relations(cursor, owned_objects)
            extensions_after = await _installed_extensions(cursor)
    except psycopg.Error as error:
        info = connection.info
        raise SchemaMigrationError(
            f"could not apply the eventcomposition schema to database "
            f"'{info.dbname}' on {info.host}:{info.port}: {error}; the user needs "
            "the CREATE privilege on the database and its first search_path schema "
            "(pg_trgm is a trusted extension, or a superuser can run "
            "'CREATE EXTENSION pg_trgm' once)"
        ) from error

    table_names = {table.name for table in OWNED_TABLES}
    created = [name for name in owned_objects if name in exists - existed]
    return MigrationResult(
        tables=tuple(table.name for table in OWNED_TABLES),
        created_tables=tuple(name for name in created if name in table_names),
        created_indexes=tuple(name for name in created if name not in table_names),
        created_extensions=tuple(
            name
            for name in REQUIRED_EXTENSIONS
            if name in extensions_after - extensions_before
        ),
        created_triggers=() if trigger_existed else (NOTIFY_TRIGGER,),
    )


async def _existing_relations(
    cursor: AsyncCursor[Any], names: Sequence[str]
) -> set[str]:
    await cursor.execute(
        "SELECT name FROM unnest(%s::text[]) AS name "
        "WHERE to_regclass(quote_ident(name)) IS NOT NULL",
        [list(names)],
    )
    return {row[0] for row in await cursor.fetchall()}


async def _installed_extensions(cursor: AsyncCursor[Any]) -> set[str]:
    await cursor.execute(
        "SELECT extname FROM pg_extension WHERE extname = ANY(%s)",
        [list(REQUIRED_EXTENSIONS)],
    )
    return {row[0] for row in await cursor.fetchall()}


async def _raise_if_incompatible(
    cursor: AsyncCursor[Any],
    tables: Iterable[ExpectedTable],
    *,
    before_migration: bool = False,
) -> None:
    problems = {}
    for table in tables:
        found = await _table_problems(cursor, table, before_migration)
        if found:
            problems[table.name] = found
    if problems:
        raise SchemaIncompatibleError(problems)


async def _trigger_exists(cursor: AsyncCursor[Any]) -> bool:
    await cursor.execute(
        "SELECT EXISTS (SELECT FROM pg_trigger "
        "WHERE tgrelid = to_regclass('events') AND tgname = %s)",
        [NOTIFY_TRIGGER],
    )
    row = await cursor.fetchone()
    return bool(row and row[0])


async def _raise_if_notify_incompatible(
    cursor: AsyncCursor[Any], *, after_migration: bool
) -> None:
    problems = {
        f"function '{NOTIFY_FUNCTION}()'": await function_problems(cursor),
        f"trigger '{NOTIFY_TRIGGER}' on table 'events'": await trigger_problems(
            cursor, must_exist=after_migration
        ),
    }
    found = {name: listed for name, listed in problems.items() if listed}
    if found:
        raise SchemaIncompatibleError({}, other_problems=found)


async def _table_problems(
    cursor: AsyncCursor[Any], table: ExpectedTable, before_migration: bool
) -> list[str]:
    await cursor.execute(
        "SELECT relkind FROM pg_class WHERE oid = to_regclass(quote_ident(%s))",
        [table.name],
    )
    row = await cursor.fetchone()
    if row is None:
        return ["it does not exist after the migration ran"]
    kind = str(row[0])
    if kind not in ("r", "p"):
        return [f"it is a {_TABLE_KINDS.get(kind, 'relation')}, not a table"]

    await cursor.execute(
        "SELECT attname, format_type(atttypid, NULL), attnotnull, "
        "       atthasdef OR attidentity <> '' "
        "FROM pg_attribute "
        "WHERE attrelid = to_regclass(quote_ident(%s)) "
        "  AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum",
        [table.name],
    )
    columns = {
        str(name): (str(type_name), bool(not_null), bool(has_default))
        for name, type_name, not_null, has_default in await cursor.fetchall()
    }
    problems = [*_column_problems(table, columns, before_migration)]

    await cursor.execute(
        "SELECT array_agg(a.attname::text) "
        "FROM pg_index i "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = to_regclass(quote_ident(%s)) "
        "  AND i.indisunique AND i.indisvalid "
        "  AND i.indpred IS NULL AND i.indexprs IS NULL "
        "GROUP BY i.indexrelid",
        [table.name],
    )
    unique_keys = [frozenset(row[0]) for row in await cursor.fetchall()]
    if table.unique_key not in unique_keys:
        key = ", ".join(
            column.name for column in table.columns if column.name in table.unique_key
        )
        problems.append(
            f"there is no primary key or unique index on exactly ({key}), "
            f"which {table.used_by} relies on"
        )
    return problems


def _column_problems(
    table: ExpectedTable,
    columns: dict[str, tuple[str, bool, bool]],
    before_migration: bool,
) -> Iterable[str]:
    expected_names = {column.name for column in table.columns}
    for column in table.columns:
        if column.name not in columns:
            if not (before_migration and column.added_in_place):
                yield f"column '{column.name}' is missing"
            continue
        type_name, _, has_default = columns[column.name]
        if type_name not in column.accepted_types:
            yield (
                f"column '{column.name}' has type {type_name}, "
                f"expected {' or '.join(column.accepted_types)}"
            )
        if column.database_fills_it and not has_default:
            yield (
                f"column '{column.name}' has no default or identity, "
                f"and {table.used_by} never writes it"
            )
    for name, (_, not_null, has_default) in columns.items():
        if name not in expected_names and not_null and not has_default:
            yield (
                f"column '{name}' is NOT NULL without a default, "
                f"and {table.used_by} never writes it"
            )
