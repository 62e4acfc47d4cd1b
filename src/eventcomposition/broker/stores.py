"""The broker's PostgreSQL state stores, without transaction control around single
statements.

logicblocks' ``PostgresEventSubscriberStateStore`` and
``PostgresEventSubscriptionStateStore`` take a pool connection per call, and a
pool connection is not in autocommit: every heartbeat, purge and synchronisation
(one statement each) travels as ``BEGIN``, the statement, ``COMMIT``, three round
trips where one does. On an idle node those are most of its statements.

These subclasses hand logicblocks' stores an ``AutocommitConnections`` instead of
the pool: the same pool's connections, switched to autocommit while the store
uses them (a client-side switch in psycopg 3: no statement is sent) and switched
back before they return to the pool. Only ``apply`` (the coordinator's changes,
several statements that must land together) keeps its transaction. The stores
reach their connections only through ``connection_pool.connection()``: a test pins
that (``tests/integration/test_broker_stores.py``).
"""

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

from logicblocks.event.processing.broker.strategies.distributed import (
    EventSubscriptionState,
    EventSubscriptionStateChange,
    EventSubscriptionStateChangeType,
    PostgresEventSubscriberStateStore,
    PostgresEventSubscriptionStateStore,
)
from logicblocks.event.processing.broker.strategies.distributed.subscriptions.stores.state import (
    postgres as subscription_queries,
)
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

type Pool = AsyncConnectionPool[AsyncConnection[Any]]


class AutocommitConnections:
    """Lends ``pool``'s connections in autocommit: one statement, one round trip."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        async with self.pool.connection() as connection:
            await connection.set_autocommit(True)
            try:
                yield connection
            finally:
                # Other users of the pool expect its default; a broken connection
                # is discarded by the pool anyway.
                if not connection.broken and not connection.closed:
                    await connection.set_autocommit(False)


class AutocommitSubscriberStateStore(PostgresEventSubscriberStateStore):
    """logicblocks' subscriber state store; each call one autocommitted statement."""

    def __init__(self, *, node_id: str, connection_pool: Pool) -> None:
        super().__init__(
            node_id=node_id,
            connection_source=cast(Pool, AutocommitConnections(connection_pool)),
        )


class AutocommitSubscriptionStateStore(PostgresEventSubscriptionStateStore):
    """logicblocks' subscription state store; each call one autocommitted statement,
    except ``apply``, whose changes commit together."""

    def __init__(self, *, node_id: str, connection_pool: Pool) -> None:
        super().__init__(
            node_id=node_id,
            connection_source=cast(Pool, AutocommitConnections(connection_pool)),
        )
        self._transactional_pool = connection_pool

    async def apply(self, changes: Sequence[EventSubscriptionStateChange]) -> None:
        """logicblocks' ``apply``, in one transaction of the pool's."""
        keys = {change.subscription.key for change in changes}
        if len(keys) != len(changes):
            raise ValueError("Multiple changes present for same subscription key.")
        if not changes:
            return
        async with self._transactional_pool.connection() as connection:
            for change in changes:
                state = EventSubscriptionState(
                    group=change.subscription.group,
                    id=change.subscription.id,
                    node_id=self.node_id,
                    event_sources=change.subscription.event_sources,
                )
                match change.type:
                    case EventSubscriptionStateChangeType.ADD:
                        await subscription_queries.add(
                            connection, state, self.table_settings
                        )
                    case EventSubscriptionStateChangeType.REPLACE:
                        await subscription_queries.replace(
                            connection, state, self.table_settings
                        )
                    case EventSubscriptionStateChangeType.REMOVE:
                        await subscription_queries.remove(
                            connection, state, self.table_settings
                        )
