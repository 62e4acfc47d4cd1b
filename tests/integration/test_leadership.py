"""The coordinator's PostgreSQL leadership lock, across a server restart."""

import asyncio

import pytest

from eventcomposition.broker.leadership import (
    CheckedPostgresLockManager,
    LeadershipLostError,
)
from eventcomposition.testing.postgres import ThrowawayPostgres

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
