"""Versions of projections in PostgreSQL: create, prepare, swap, cancel, drop, reset.

Every operation on a group's versions takes a transaction-level advisory lock of
that group first, so nodes and commands never interleave their changes. The swap is
one transaction: it freezes the live version's checkpoints (by locking the live
group's claims and checkpoints), waits until the building version has applied at
least as much of every source, fences the live group's claims for good, points the
stable schema's views at the new version's tables and records the new states.
Readers of the stable schema see the old version or the new one, whole.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from .._lazy import lazy_logger
from ..schema.application import (
    ApplicationMigrationError,
    Migration,
    apply_migrations,
)
from .versions import (
    ProjectionError,
    ProjectionVersion,
    RebuildProgress,
    VersionState,
    building_of,
    caught_up,
    check_can_cancel,
    check_can_drop,
    check_can_rebuild,
    live_of,
    next_version,
    rebuild_progress,
    version_schema_name,
)

logger = lazy_logger("eventcomposition.projections")

type Pool = AsyncConnectionPool[AsyncConnection[Any]]

_COLUMNS = (
    '"group", version, state, schema_name, stable_schema, prepared, created_at, '
    "swapped_at, retired_at, error"
)
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
_TRY_LOCK = "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))"
_SESSION_LOCK = "SELECT pg_advisory_lock(hashtextextended(%s, 0))"
_SESSION_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended(%s, 0))"
_FENCE = sql.SQL("""
UPDATE consumer_claims
SET epoch = epoch + 1, holder_node = '(fenced)', holder_subscriber = {why},
    lease_expires_at = 'infinity', released = false
WHERE "group" = {group}
""")
_MIGRATIONS_TABLE = "application_migrations"
_RETRY_PAUSE = 0.02


def _lock_key(group: str) -> str:
    return f"eventcomposition.projection:{group}"


def _version(row: Sequence[Any]) -> ProjectionVersion:
    (
        group,
        version,
        state,
        schema,
        stable,
        prepared,
        created,
        swapped,
        retired,
        error,
    ) = row
    return ProjectionVersion(
        group=group,
        version=int(version),
        state=VersionState(state),
        schema_name=schema,
        stable_schema=stable,
        prepared=bool(prepared),
        created_at=created,
        swapped_at=swapped,
        retired_at=retired,
        error=error,
    )


class _NotCaughtUp(Exception):
    """Rolls a swap back: the building version did not catch up in time."""


class ProjectionCatalog:
    """The ``projection_versions`` table and what changes it, on ``pool``'s database."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    @property
    def pool(self) -> Pool:
        return self._pool

    # -- reading -----------------------------------------------------------------

    async def versions(self, group: str) -> list[ProjectionVersion]:
        """Every version of ``group``, oldest first."""
        async with self._pool.connection() as connection:
            return await _versions(connection, group)

    async def all_versions(self) -> dict[str, list[ProjectionVersion]]:
        """Every versioned group's versions, by group."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"SELECT {_COLUMNS} FROM projection_versions ORDER BY 1, 2"
            )
            found: dict[str, list[ProjectionVersion]] = {}
            for row in await cursor.fetchall():
                version = _version(row)
                found.setdefault(version.group, []).append(version)
            return found

    async def positions(self, group: str) -> dict[str, int]:
        """The checkpoints of a checkpoint group, by source key."""
        async with self._pool.connection() as connection:
            return await _positions(connection, group)

    async def progress(self, group: str) -> RebuildProgress | None:
        """Where the running rebuild of ``group`` stands; None when none runs."""
        versions = await self.versions(group)
        live, building = live_of(versions), building_of(versions)
        if live is None or building is None:
            return None
        return rebuild_progress(
            live,
            building,
            await self.positions(live.checkpoint_group),
            await self.positions(building.checkpoint_group),
        )

    # -- commands ----------------------------------------------------------------

    async def request_rebuild(self, group: str) -> ProjectionVersion:
        """Create the next version of ``group``, to be built by its nodes.

        Raises ``RebuildInProgressError`` while another rebuild of the group runs.
        """
        async with self._locked(group) as (connection, versions):
            check_can_rebuild(group, versions)
            live = live_of(versions)
            assert live is not None
            number = next_version(versions)
            cursor = await connection.execute(
                "INSERT INTO projection_versions "
                '("group", version, state, schema_name, stable_schema, prepared, '
                "created_at) VALUES (%s, %s, 'building', %s, %s, false, now()) "
                f"RETURNING {_COLUMNS}",
                [
                    group,
                    number,
                    version_schema_name(live.stable_schema, number),
                    live.stable_schema,
                ],
            )
            row = await cursor.fetchone()
            assert row is not None
            return _version(row)

    async def cancel(self, group: str) -> ProjectionVersion:
        """Stop the running rebuild of ``group`` and drop what it built."""
        async with self._locked(group) as (connection, versions):
            building = check_can_cancel(group, versions)
            await _fence(connection, building.checkpoint_group, "cancelled")
            await _forget(connection, building.checkpoint_group, keep_claims=True)
            await _drop_schema(connection, building.schema_name)
            return await _set_state(connection, building, VersionState.CANCELLED)

    async def drop(self, group: str, version: int) -> ProjectionVersion:
        """Drop a retired version: its schema, checkpoints, claims, dead letters."""
        async with self._locked(group) as (connection, versions):
            retired = check_can_drop(group, versions, version)
            await _drop_schema(connection, retired.schema_name)
            await _forget(connection, retired.checkpoint_group, keep_claims=False)
            return await _set_state(connection, retired, VersionState.DROPPED)

    async def reset(self, group: str) -> ProjectionVersion:
        """Empty the live version in place and start it again from the first event.

        Readers see it empty, then filling: for small or development projections.
        """
        async with self._locked(group) as (connection, versions):
            live = live_of(versions)
            if live is None:
                raise ProjectionError(
                    f"subscriber group '{group}' has no live projection version: "
                    "nothing to reset"
                )
            building = building_of(versions)
            if building is not None:
                raise ProjectionError(
                    f"a rebuild of '{group}' to version {building.version} is running:"
                    f" cancel it first ('eventcomposition projections cancel {group}')"
                )
            cg = live.checkpoint_group
            # The tables first, in one statement: a batch in flight finishes (it
            # takes the claims after its writes), and the next ones wait here.
            tables = [
                sql.Identifier(live.schema_name, table)
                for table in await _tables(connection, live.schema_name, kinds="rp")
                if table != _MIGRATIONS_TABLE
            ]
            if tables:
                await connection.execute(
                    sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(tables))
                )
            await connection.execute(
                'SELECT 1 FROM consumer_claims WHERE "group" = %s ORDER BY source '
                "FOR UPDATE",
                [cg],
            )
            await _forget(connection, cg, keep_claims=True)
            # A new epoch, released: in-flight batches fail their fence, and the
            # holders claim again and read the (now missing) checkpoint afresh.
            await connection.execute(
                "UPDATE consumer_claims SET epoch = epoch + 1, released = true, "
                'lease_expires_at = now() WHERE "group" = %s',
                [cg],
            )
            return live

    # -- what nodes do -----------------------------------------------------------

    async def ensure_initial(
        self, group: str, stable_schema: str, migrations: Sequence[Migration]
    ) -> ProjectionVersion:
        """The live version of ``group``, creating version 1 (its schema, the
        application's migrations in it, the stable views) when there is none."""
        versions = await self.versions(group)
        live = live_of(versions)
        if live is not None and live.prepared:
            return live
        if not versions:
            async with self._locked(group) as (connection, current):
                if not current:
                    await connection.execute(
                        "INSERT INTO projection_versions "
                        '("group", version, state, schema_name, stable_schema, '
                        "prepared, created_at) "
                        "VALUES (%s, 1, 'live', %s, %s, false, now())",
                        [group, version_schema_name(stable_schema, 1), stable_schema],
                    )
        live = live_of(await self.versions(group))
        if live is None:
            raise ProjectionError(
                f"subscriber group '{group}' has versions but none is live: drop or "
                "repair its rows in projection_versions"
            )
        return await self.prepare(live, migrations)

    async def prepare(
        self, version: ProjectionVersion, migrations: Sequence[Migration]
    ) -> ProjectionVersion:
        """Create ``version``'s schema and apply ``migrations`` in it (with the
        schema first on the search_path); a live version's views follow. Records a
        failing migration's message on the version and raises it."""
        key = _lock_key(version.group)
        async with self._pool.connection() as connection:
            await connection.set_autocommit(True)
            try:
                await connection.execute(_SESSION_LOCK, [key])
                try:
                    return await self._prepare(connection, version, migrations)
                finally:
                    await connection.execute(_SESSION_UNLOCK, [key])
            finally:
                await connection.set_autocommit(False)

    async def _prepare(
        self,
        connection: AsyncConnection[Any],
        version: ProjectionVersion,
        migrations: Sequence[Migration],
    ) -> ProjectionVersion:
        current = next(
            (
                v
                for v in await _versions(connection, version.group)
                if v.version == version.version
            ),
            None,
        )
        if current is None or current.prepared:
            return current or version
        if current.state not in (VersionState.LIVE, VersionState.BUILDING):
            return current
        await connection.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                sql.Identifier(current.schema_name)
            )
        )
        cursor = await connection.execute("SHOW search_path")
        row = await cursor.fetchone()
        original = str(row[0]) if row else "public"
        await connection.execute(
            "SELECT set_config('search_path', %s, false)",
            [f'"{current.schema_name}", {original}'],
        )
        try:
            await apply_migrations(connection, migrations)
        except ApplicationMigrationError as error:
            await connection.execute(
                'UPDATE projection_versions SET error = %s WHERE "group" = %s '
                "AND version = %s",
                [str(error), current.group, current.version],
            )
            raise
        finally:
            await connection.execute(
                "SELECT set_config('search_path', %s, false)", [original]
            )
        async with connection.transaction():
            if current.state is VersionState.LIVE:
                await _point_views(connection, current)
            cursor = await connection.execute(
                "UPDATE projection_versions SET prepared = true, error = NULL "
                'WHERE "group" = %s AND version = %s '
                f"RETURNING {_COLUMNS}",
                [current.group, current.version],
            )
            updated = await cursor.fetchone()
        assert updated is not None
        await logger.ainfo(
            "projection.version-prepared",
            group=current.group,
            version=current.version,
            schema=current.schema_name,
        )
        return _version(updated)

    async def swap(
        self,
        group: str,
        version: int,
        *,
        catch_up: Callable[[], Awaitable[None]] | None = None,
        within: timedelta = timedelta(seconds=5),
    ) -> bool:
        """Make the building ``version`` of ``group`` the live one, in one
        transaction; False (and nothing changed) when it is not the building
        version, another swap runs, or it did not catch up ``within`` that
        time. ``catch_up`` is called while waiting (e.g. this node's share of
        the rebuild)."""
        try:
            async with self._pool.connection() as connection, connection.transaction():
                return await self._swap(
                    connection, group, version, catch_up, within.total_seconds()
                )
        except _NotCaughtUp:
            return False

    async def _swap(
        self,
        connection: AsyncConnection[Any],
        group: str,
        version: int,
        catch_up: Callable[[], Awaitable[None]] | None,
        within: float,
    ) -> bool:
        cursor = await connection.execute(_TRY_LOCK, [_lock_key(group)])
        locked = await cursor.fetchone()
        if not (locked and locked[0]):
            return False
        versions = await _versions(connection, group)
        live, building = live_of(versions), building_of(versions)
        if (
            live is None
            or building is None
            or building.version != version
            or not building.prepared
        ):
            return False
        # Everything the swap writes, composed before the live version stands
        # still, and sent in one round trip once it does.
        switch = sql.SQL("; ").join(
            [
                _fence_statement(live.checkpoint_group, f"retired by v{version}"),
                *await _view_statements(connection, building),
                _state_statement(live, VersionState.RETIRED),
                _state_statement(building, VersionState.LIVE),
            ]
        )
        # Freeze the live version: its batches wait on their fence (claims first,
        # as every batch takes them, so no deadlock), its checkpoints stand still.
        await connection.execute(
            'SELECT 1 FROM consumer_claims WHERE "group" = %s ORDER BY source '
            "FOR UPDATE",
            [live.checkpoint_group],
        )
        cursor = await connection.execute(
            "SELECT source, sequence_number FROM consumer_checkpoints "
            'WHERE "group" = %s ORDER BY source FOR UPDATE',
            [live.checkpoint_group],
        )
        frozen = {
            str(source): int(position) for source, position in await cursor.fetchall()
        }
        # The live version stands still until this transaction ends: no pause
        # after this node's own catch-up (other nodes' shares are waited for).
        deadline = time.monotonic() + within
        while not caught_up(
            frozen, await _positions(connection, building.checkpoint_group)
        ):
            if time.monotonic() >= deadline:
                raise _NotCaughtUp()
            if catch_up is not None:
                await catch_up()
                if caught_up(
                    frozen, await _positions(connection, building.checkpoint_group)
                ):
                    break
            await asyncio.sleep(_RETRY_PAUSE)
        await connection.execute(switch)
        await logger.ainfo(
            "projection.swapped",
            group=group,
            version=version,
            retired_version=live.version,
        )
        return True

    # -- support -------------------------------------------------------------------

    @asynccontextmanager
    async def _locked(
        self, group: str
    ) -> AsyncIterator[tuple[AsyncConnection[Any], list[ProjectionVersion]]]:
        """A transaction holding ``group``'s lock, with its versions read in it."""
        async with self._pool.connection() as connection, connection.transaction():
            await connection.execute(_LOCK, [_lock_key(group)])
            yield connection, await _versions(connection, group)


async def _versions(
    connection: AsyncConnection[Any], group: str
) -> list[ProjectionVersion]:
    cursor = await connection.execute(
        f'SELECT {_COLUMNS} FROM projection_versions WHERE "group" = %s '
        "ORDER BY version",
        [group],
    )
    return [_version(row) for row in await cursor.fetchall()]


async def _positions(connection: AsyncConnection[Any], group: str) -> dict[str, int]:
    cursor = await connection.execute(
        'SELECT source, sequence_number FROM consumer_checkpoints WHERE "group" = %s',
        [group],
    )
    return {str(source): int(position) for source, position in await cursor.fetchall()}


async def _fence(connection: AsyncConnection[Any], group: str, why: str) -> None:
    """Take every claim of ``group`` away for good: its batches in flight fail
    their fence and roll back, and no subscriber can claim its sources again."""
    await connection.execute(_fence_statement(group, why))


def _fence_statement(group: str, why: str) -> sql.Composed:
    return _FENCE.format(group=sql.Literal(group), why=sql.Literal(why))


async def _forget(
    connection: AsyncConnection[Any], group: str, *, keep_claims: bool
) -> None:
    await connection.execute(
        'DELETE FROM consumer_checkpoints WHERE "group" = %s', [group]
    )
    await connection.execute(
        'DELETE FROM consumer_dead_letters WHERE "group" = %s', [group]
    )
    if not keep_claims:
        await connection.execute(
            'DELETE FROM consumer_claims WHERE "group" = %s', [group]
        )


async def _drop_schema(connection: AsyncConnection[Any], schema: str) -> None:
    await connection.execute(
        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
    )


async def _set_state(
    connection: AsyncConnection[Any], version: ProjectionVersion, state: VersionState
) -> ProjectionVersion:
    cursor = await connection.execute(
        _state_statement(version, state)
        + sql.SQL(" RETURNING {}").format(sql.SQL(_COLUMNS))
    )
    row = await cursor.fetchone()
    assert row is not None
    return _version(row)


def _state_statement(version: ProjectionVersion, state: VersionState) -> sql.Composed:
    stamp = {
        VersionState.LIVE: ", swapped_at = now()",
        VersionState.RETIRED: ", retired_at = now()",
    }.get(state, "")
    return sql.SQL(
        "UPDATE projection_versions SET state = {state}" + stamp + " "
        'WHERE "group" = {group} AND version = {version}'
    ).format(
        state=sql.Literal(state.value),
        group=sql.Literal(version.group),
        version=sql.Literal(version.version),
    )


async def _tables(
    connection: AsyncConnection[Any], schema: str, *, kinds: str = "rpvm"
) -> list[str]:
    """The relations of ``schema`` of ``kinds`` (by default what readers may see:
    tables, partitioned tables, views, materialised views)."""
    cursor = await connection.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind::text = ANY(%s) ORDER BY 1",
        [schema, list(kinds)],
    )
    return [str(row[0]) for row in await cursor.fetchall()]


async def _point_views(
    connection: AsyncConnection[Any], version: ProjectionVersion
) -> None:
    """Make the stable schema hold one view per relation of ``version``'s schema
    (in the caller's transaction, so readers see the change all at once)."""
    await connection.execute(
        sql.SQL("; ").join(await _view_statements(connection, version))
    )


async def _view_statements(
    connection: AsyncConnection[Any], version: ProjectionVersion
) -> list[sql.Composable]:
    """The statements that make the stable schema hold one view per relation of
    ``version``'s schema and no other view (read now, for the caller to run)."""
    stable = version.stable_schema
    statements: list[sql.Composable] = [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(stable))
    ]
    statements += [
        sql.SQL("DROP VIEW IF EXISTS {} CASCADE").format(sql.Identifier(stable, view))
        for view in await _tables(connection, stable, kinds="v")
    ]
    statements += [
        sql.SQL("CREATE VIEW {} AS SELECT * FROM {}").format(
            sql.Identifier(stable, table),
            sql.Identifier(version.schema_name, table),
        )
        for table in await _tables(connection, version.schema_name)
        if table != _MIGRATIONS_TABLE
    ]
    return statements
