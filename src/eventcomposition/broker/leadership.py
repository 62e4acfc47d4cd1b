"""The coordinator's leadership: its PostgreSQL lock, checked, and who holds it.

logicblocks' ``PostgresLockManager`` holds the coordinator's leadership as a
transaction-level advisory lock on a connection of its own, so the leader's
connection sits ``idle in transaction`` with a snapshot (``backend_xmin``) for its
whole term (up to 15 minutes): VACUUM cannot remove the rows that churn meanwhile
(events, claims, checkpoints, subscribers). Here the lock is a session-level
advisory lock on a dedicated autocommit connection: no transaction stays open, and
the lock still lives exactly as long as that connection (a dead connection frees
it, as before). Session and transaction advisory locks on one key exclude each
other, so mixed clusters (logicblocks' own coordinators beside ours) still elect
one leader.

When the server
restarts, that connection and the lock vanish, but the coordinator does not notice:
it keeps distributing until its leadership max duration (15 minutes by default)
while another coordinator takes the lock on the restarted server, and two leaders
allocate the same sources. Here the lock's connection is checked before every
distribution; a lost lock fails the coordinator, so the broker restarts (with
backoff) and competes for leadership again.

The lock's connection carries the node id in its ``application_name``, so
``leader.leading_coordinator`` can name the node that leads; the lock's key is
``leader.advisory_lock_key`` of its name, the one computation both use. It also carries TCP
keepalives and ``tcp_user_timeout`` on both ends (``connections.ConnectionTimeouts``),
so that a leader cut off from the server loses the lock within seconds on the
server's side, where a standby can take it, and notices on its own.
"""

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager, suppress
from typing import Any

import psycopg
from logicblocks.event.persistence.postgres import ConnectionSettings
from logicblocks.event.processing import Lock, LockManager, PostgresLockManager
from logicblocks.event.processing.broker.strategies.distributed import (
    DefaultEventSubscriptionCoordinator,
)
from psycopg import AsyncConnection

from ..connections import ConnectionTimeouts
from ..errors import EventCompositionError
from .leader import (
    COORDINATOR_LOCK_KEY,
    COORDINATOR_LOCK_NAME,
    LOCK_HOLDER_APPLICATION_PREFIX,
    CoordinatorLeader,
    advisory_lock_key,
    leading_coordinator,
)

__all__ = [
    "COORDINATOR_LOCK_KEY",
    "LOCK_HOLDER_APPLICATION_PREFIX",
    "CheckedPostgresLockManager",
    "CoordinatorLeader",
    "LeaderCheckingCoordinator",
    "LeadershipLostError",
    "leading_coordinator",
    "verify_leadership",
]


class LeadershipLostError(EventCompositionError):
    """The coordinator's leadership lock is no longer held."""


class CheckedPostgresLockManager(PostgresLockManager):
    """logicblocks' PostgreSQL lock manager that can tell whether a lock is held,
    and holds a lock without holding a transaction open (``try_lock``).

    With a ``node_id``, its lock connections name the node in their
    ``application_name`` (PostgreSQL keeps its first 63 bytes).
    """

    def __init__(
        self, connection_settings: ConnectionSettings, node_id: str | None = None
    ) -> None:
        super().__init__(connection_settings=connection_settings)
        self._application_name = (
            None if node_id is None else LOCK_HOLDER_APPLICATION_PREFIX + node_id
        )
        self._held: dict[str, AsyncConnection[Any]] = {}
        self._connection_kwargs = ConnectionTimeouts(
            idle_in_transaction=None
        ).connection_kwargs()

    @asynccontextmanager
    async def try_lock(self, lock_name: str) -> AsyncGenerator[Lock]:
        """Try ``lock_name`` once; held (without a transaction) until exit."""
        key = advisory_lock_key(lock_name)
        async with await self._connect() as connection:
            cursor = await connection.execute("SELECT pg_try_advisory_lock(%s)", [key])
            row = await cursor.fetchone()
            locked = bool(row and row[0])
            if locked:
                self._held[lock_name] = connection
            try:
                yield Lock(name=lock_name, locked=locked, timed_out=False)
            finally:
                # A failed second attempt must not forget the lock the first holds.
                if self._held.get(lock_name) is connection:
                    del self._held[lock_name]
                if locked:
                    await _unlock(connection, key)

    async def verify_held(self, lock_name: str) -> None:
        """Raise ``LeadershipLostError`` unless ``lock_name`` is still held."""
        connection = self._held.get(lock_name)
        if connection is None or connection.closed or connection.broken:
            raise LeadershipLostError(f"lock {lock_name!r} is not held")
        try:
            # Named, so the statement statistics tell it from other checks.
            await connection.execute("SELECT 1 AS leadership_check")
        except psycopg.Error as error:
            raise LeadershipLostError(
                f"lost the connection holding lock {lock_name!r}: {error}"
            ) from error

    async def _connect(self) -> AsyncConnection[Any]:
        conninfo = self.connection_settings.to_connection_string()
        if self._application_name is None:
            return await AsyncConnection.connect(
                conninfo, autocommit=True, **self._connection_kwargs
            )
        return await AsyncConnection.connect(
            conninfo,
            autocommit=True,
            application_name=self._application_name,
            **self._connection_kwargs,
        )


async def _unlock(connection: AsyncConnection[Any], key: int) -> None:
    # Closing the connection frees the lock anyway; unlocking first frees it at
    # once even if the close is slow. A broken connection has lost it already.
    if connection.closed or connection.broken:
        return
    with suppress(psycopg.Error):
        await connection.execute("SELECT pg_advisory_unlock(%s)", [key])


async def verify_leadership(lock_manager: LockManager) -> None:
    """Raise ``LeadershipLostError`` if the coordinator's lock is known to be lost.

    A coordinator calls this before each distribution. Lock managers that cannot
    tell (logicblocks' own, the in-memory one) pass.
    """
    if isinstance(lock_manager, CheckedPostgresLockManager):
        await lock_manager.verify_held(COORDINATOR_LOCK_NAME)


class LeaderCheckingCoordinator(DefaultEventSubscriptionCoordinator):
    """logicblocks' coordinator that confirms its leadership before distributing."""

    def __init__(self, *, lock_manager: LockManager, **kwargs: Any) -> None:
        super().__init__(lock_manager=lock_manager, **kwargs)
        self._leadership_lock_manager = lock_manager

    async def distribute(self) -> None:
        await verify_leadership(self._leadership_lock_manager)
        await super().distribute()
