"""Coordinator leadership that notices when its PostgreSQL lock is gone.

logicblocks' ``PostgresLockManager`` holds the coordinator's leadership as a
transaction-level advisory lock on a connection of its own. When the server
restarts, that connection and the lock vanish, but the coordinator does not notice:
it keeps distributing until its leadership max duration (15 minutes by default)
while another coordinator takes the lock on the restarted server, and two leaders
allocate the same sources. Here the lock's connection is checked before every
distribution; a lost lock fails the coordinator, so the broker restarts (with
backoff) and competes for leadership again.
"""

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from logicblocks.event.processing import Lock, PostgresLockManager
from logicblocks.event.processing.broker.strategies.distributed import (
    COORDINATOR_LOCK_NAME,
    DefaultEventSubscriptionCoordinator,
)
from logicblocks.event.processing.locks.postgres import get_digest
from psycopg import AsyncConnection

from ..errors import EventCompositionError


class LeadershipLostError(EventCompositionError):
    """The coordinator's leadership lock is no longer held."""


class CheckedPostgresLockManager(PostgresLockManager):
    """logicblocks' PostgreSQL lock manager that can tell whether a lock is held."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: dict[str, AsyncConnection[Any]] = {}

    @asynccontextmanager
    async def try_lock(self, lock_name: str) -> AsyncGenerator[Lock]:
        async with await AsyncConnection.connect(
            self.connection_settings.to_connection_string()
        ) as connection:
            cursor = await connection.execute(
                "SELECT pg_try_advisory_xact_lock(%s)", [_lock_key(lock_name)]
            )
            row = await cursor.fetchone()
            locked = bool(row and row[0])
            if locked:
                self._held[lock_name] = connection
            try:
                yield Lock(name=lock_name, locked=locked, timed_out=False)
            finally:
                self._held.pop(lock_name, None)

    async def verify_held(self, lock_name: str) -> None:
        """Raise ``LeadershipLostError`` unless ``lock_name`` is still held."""
        connection = self._held.get(lock_name)
        if connection is None or connection.closed or connection.broken:
            raise LeadershipLostError(f"lock {lock_name!r} is not held")
        try:
            await connection.execute("SELECT 1")
        except psycopg.Error as error:
            raise LeadershipLostError(
                f"lost the connection holding lock {lock_name!r}: {error}"
            ) from error


def _lock_key(lock_name: str) -> int:
    # The same key logicblocks derives, so mixed clusters contend for one lock.
    return get_digest(lock_name)


class LeaderCheckingCoordinator(DefaultEventSubscriptionCoordinator):
    """logicblocks' coordinator that confirms its leadership before distributing."""

    async def distribute(self) -> None:
        lock_manager = self._lock_manager
        if isinstance(lock_manager, CheckedPostgresLockManager):
            await lock_manager.verify_held(COORDINATOR_LOCK_NAME)
        await super().distribute()
