"""The broker's PostgreSQL state stores, without transaction control around single
statements.

logicblocks' ``PostgresEventSubscriberStateStore`` and
``PostgresEventSubscriptionStateStore`` take a pool connection per call, and a
pool connection is not in autocommit: every heartbeat, purge and synchronisation
(one statement each) travels as ``BEGIN``, the statement, ``COMMIT``, three round
trips where one does. On an idle node those are most of its statements.

These subclasses hand logicblocks' stores an ``AutocommitConnections`` instead of
the pool (``eventcomposition.connections``): the same pool's connections, in
autocommit while the store uses them. Only ``apply`` (the coordinator's changes,
several statements that must land together) keeps its transaction. The stores
reach their connections only through ``connection_pool.connection()``: a test pins
that (``tests/integration/test_broker_stores.py``).
"""

from collections.abc import Sequence
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

from ..connections import AutocommitConnections

type Pool = AsyncConnectionPool[AsyncConnection[Any]]


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
