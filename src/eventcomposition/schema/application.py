"""An application's own migrations, applied after the eventcomposition schema.

An application declares them in order: SQL files, or ``Migration`` objects whose
``apply`` is SQL text or an async callable that receives the connection. Each runs
in its own transaction and is recorded by name in ``application_migrations``, so
it runs once; a failing one is rolled back and named, and those before it stay.
"""

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection

from .errors import SchemaError

MIGRATIONS_TABLE = "application_migrations"

type MigrationStep = str | Callable[[AsyncConnection[Any]], Awaitable[None]]
"""SQL text (one or more statements), or an async callable given the connection."""


@dataclass(frozen=True)
class Migration:
    """One application migration: ``name`` records it, so keep it stable."""

    name: str
    apply: MigrationStep


type MigrationDeclaration = Migration | Path
"""What an application lists: a ``Migration``, or a ``.sql`` file (its file name
is its name)."""


class ApplicationMigrationError(SchemaError):
    """An application migration failed (and was rolled back), or is ill-declared."""

    def __init__(self, message: str, *, migration: str | None = None) -> None:
        super().__init__(message)
        self.migration = migration


def sql_migrations(directory: Path | str) -> list[Migration]:
    """Every ``*.sql`` file of ``directory``, by file name, as migrations."""
    folder = Path(directory)
    if not folder.is_dir():
        raise ApplicationMigrationError(f"migrations folder {folder} does not exist")
    return [as_migration(path) for path in sorted(folder.glob("*.sql"))]


def as_migration(declaration: MigrationDeclaration) -> Migration:
    match declaration:
        case Migration():
            return declaration
        case Path():
            try:
                text = declaration.read_text(encoding="utf-8")
            except OSError as error:
                raise ApplicationMigrationError(
                    f"cannot read migration {declaration}: {error.strerror}",
                    migration=declaration.name,
                ) from None
            return Migration(declaration.name, text)
    raise ApplicationMigrationError(
        f"an application migration must be a Migration or a Path to a .sql file, "
        f"not {type(declaration).__name__}"
    )


def checked_migrations(declarations: Iterable[MigrationDeclaration]) -> list[Migration]:
    """The declared migrations, refusing empty or repeated names."""
    migrations = [as_migration(declaration) for declaration in declarations]
    seen: set[str] = set()
    for migration in migrations:
        if not migration.name.strip():
            raise ApplicationMigrationError("an application migration has no name")
        if migration.name in seen:
            raise ApplicationMigrationError(
                f"application migration {migration.name!r} is declared twice",
                migration=migration.name,
            )
        seen.add(migration.name)
    return migrations


async def apply_migrations(
    connection: AsyncConnection[Any], migrations: Sequence[Migration]
) -> tuple[str, ...]:
    """Apply those of ``migrations`` not yet recorded, in order; their names.

    The caller holds the migration lock, so no other node applies them meanwhile.
    """
    async with connection.transaction():
        await connection.execute(
            f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
            "name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await connection.execute(f"SELECT name FROM {MIGRATIONS_TABLE}")
        recorded = {str(row[0]) for row in await cursor.fetchall()}
    applied: list[str] = []
    for migration in migrations:
        if migration.name in recorded:
            continue
        try:
            async with connection.transaction():
                # Durable once recorded, whatever the server's default.
                await connection.execute("SET LOCAL synchronous_commit = on")
                if isinstance(migration.apply, str):
                    await connection.execute(migration.apply.encode("utf-8"))
                else:
                    await migration.apply(connection)
                await connection.execute(
                    f"INSERT INTO {MIGRATIONS_TABLE} (name) VALUES (%s)",
                    [migration.name],
                )
        except Exception as error:  # the user's callable may raise anything
            reason = str(error).strip().splitlines()[0] if str(error) else repr(error)
            raise ApplicationMigrationError(
                f"application migration {migration.name!r} failed and was rolled "
                f"back: {reason}; "
                + (
                    f"{', '.join(applied)} applied before it; "
                    if applied
                    else "nothing else was applied; "
                )
                + "fix it and migrate again",
                migration=migration.name,
            ) from error
        applied.append(migration.name)
    return tuple(applied)
