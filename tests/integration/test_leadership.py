"""The coordinator's PostgreSQL leadership lock: held across a server restart or
not, and which node holds it."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from logicblocks.event.processing import PostgresLockManager
from psycopg import AsyncConnection

from eventcomposition.broker import COORDINATOR_LOCK_NAME, leading_coordinator
from eventcomposition.broker.leadership import (
    CheckedPostgresLockManager,
    LeadershipLostError,
)
from eventcomposition.schema.migrate import _MIGRATION_LOCK_KEY
from eventcomposition.testing.postgres import ConnectionInfo, ThrowawayPostgres

LOCK = "eventcomposition-test-lock"


async def test_a_held_lock_verifies_until_the_server_restarts(
    throwaway_postgres: ThrowawayPostgres,
) -> None:
    settings = throwaway_postgres.connection_info.connection_settings()
    leader = CheckedPostgresLockManager(connection_settings=settings)
    rival = CheckedPostgresLockManager(connection_settings=settings)

    async with leader.try_lock(LOCK) as lock:
        assert lock.locked
        await leader.verify_held(LOCK)
        async with rival.try_lock(LOCK) as contended:
            assert not contended.locked

        await asyncio.to_thread(throwaway_postgres.restart)

        with pytest.raises(LeadershipLostError, match=LOCK):
            await leader.verify_held(LOCK)
        # Meanwhile the lock is free on the restarted server: only the check above
        # keeps the old leader from carrying on beside a new one.
        async with rival.try_lock(LOCK) as taken:
            assert taken.locked


async def test_a_lock_that_was_not_taken_does_not_verify(
    throwaway_postgres: ThrowawayPostgres,
) -> None:
    settings = throwaway_postgres.connection_info.connection_settings()
    manager = CheckedPostgresLockManager(connection_settings=settings)

    with pytest.raises(LeadershipLostError, match="is not held"):
        await manager.verify_held(LOCK)


async def test_a_failed_second_attempt_keeps_the_held_lock_recorded(
    throwaway_postgres: ThrowawayPostgres,
) -> None:
    settings = throwaway_postgres.connection_info.connection_settings()
    manager = CheckedPostgresLockManager(connection_settings=settings)

    async with manager.try_lock(LOCK) as held:
        assert held.locked
        async with manager.try_lock(LOCK) as again:
            assert not again.locked

        await manager.verify_held(LOCK)


async def test_the_leading_coordinator_is_named_by_its_own_lock_only(
    postgres_database: ConnectionInfo,
) -> None:
    leader = CheckedPostgresLockManager(
        postgres_database.connection_settings(), node_id="coordinator-7"
    )
    async with (
        await AsyncConnection.connect(postgres_database.conninfo) as status,
        holding_migration_lock(postgres_database),
    ):
        assert await leading_coordinator(status) is None

        async with leader.try_lock(COORDINATOR_LOCK_NAME) as lock:
            assert lock.locked
            found = await leading_coordinator(status)
            assert found is not None
            assert found.node_id == "coordinator-7"

        assert await leading_coordinator(status) is None


async def test_a_logicblocks_coordinator_lock_leads_without_a_node_name(
    postgres_database: ConnectionInfo,
) -> None:
    # logicblocks' own lock manager derives the same key and tags nothing.
    theirs = PostgresLockManager(postgres_database.connection_settings())
    async with (
        await AsyncConnection.connect(postgres_database.conninfo) as status,
        theirs.try_lock(COORDINATOR_LOCK_NAME) as lock,
    ):
        assert lock.locked
        found = await leading_coordinator(status)

    assert found is not None
    assert found.node_id is None
    assert found.pid > 0


@asynccontextmanager
async def holding_migration_lock(database: ConnectionInfo) -> AsyncIterator[None]:
    """Hold the advisory lock ``migrate`` takes, as a migration in progress does."""
    async with (
        await AsyncConnection.connect(database.conninfo) as connection,
        connection.transaction(),
    ):
        await connection.execute(
            "SELECT pg_advisory_xact_lock(%s)", [_MIGRATION_LOCK_KEY]
        )
        yield


async def test_a_held_lock_keeps_no_transaction_open(
    postgres_database: ConnectionInfo,
) -> None:
    # A snapshot held for a leadership term (up to 15 minutes) would keep VACUUM
    # from removing the dead rows the whole database makes meanwhile.
    leader = CheckedPostgresLockManager(
        postgres_database.connection_settings(), node_id="coordinator-x"
    )
    async with (
        await AsyncConnection.connect(
            postgres_database.conninfo, autocommit=True
        ) as status,
        leader.try_lock(COORDINATOR_LOCK_NAME) as lock,
    ):
        assert lock.locked
        await leader.verify_held(COORDINATOR_LOCK_NAME)
        cursor = await status.execute(
            "SELECT state, backend_xmin IS NULL, xact_start IS NULL "
            "FROM pg_stat_activity WHERE application_name = 'coordinator:coordinator-x'"
        )
        assert await cursor.fetchall() == [("idle", True, True)]
        found = await leading_coordinator(status)
        assert found is not None
        assert found.node_id == "coordinator-x"

    async with leader.try_lock(COORDINATOR_LOCK_NAME) as again:
        assert again.locked  # released on exit
