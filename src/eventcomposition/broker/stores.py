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

They also read back every kind of source: logicblocks' stores write each source with
its ``serialise()`` but read it back with ``event_sequence_identifier``, which knows
only log, category and stream, so a subscriber requesting partitions would fail
every listing (pinned in ``tests/unit/broker/test_logicblocks_pins.py``). ``list``
here reads the same rows with ``source_identifier``, which also knows
``CategoryPartition``. logicblocks' ``EventStoreEventSourceFactory`` likewise maps
identifier types to sources: ``event_source_factory`` registers partitions with it.
"""

import builtins
from collections.abc import Sequence
from datetime import UTC, timedelta
from typing import Any, cast

from logicblocks.event.processing.broker.strategies.distributed import (
    EventSubscriberState,
    EventSubscriptionState,
    EventSubscriptionStateChange,
    EventSubscriptionStateChangeType,
    PostgresEventSubscriberStateStore,
    PostgresEventSubscriptionStateStore,
)
from logicblocks.event.processing.broker.strategies.distributed.subscriptions.stores.state import (
    postgres as subscription_queries,
)
from logicblocks.event.query import FilterClause, Operator, Path, Search
from logicblocks.event.store import EventStorageAdapter, EventStoreEventSourceFactory
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from ..connections import AutocommitConnections
from ..consumers.partitions import (
    CategoryPartition,
    construct_partition,
    source_identifier,
)

type Pool = AsyncConnectionPool[AsyncConnection[Any]]


def event_source_factory(adapter: EventStorageAdapter) -> EventStoreEventSourceFactory:
    """logicblocks' factory over ``adapter``, which also makes partitions' sources."""
    return EventStoreEventSourceFactory(adapter=adapter).register_constructor(
        CategoryPartition, construct_partition
    )


class AutocommitSubscriberStateStore(PostgresEventSubscriberStateStore):
    """logicblocks' subscriber state store; each call one autocommitted statement."""

    def __init__(self, *, node_id: str, connection_pool: Pool) -> None:
        super().__init__(
            node_id=node_id,
            connection_source=cast(Pool, AutocommitConnections(connection_pool)),
        )

    async def list(
        self,
        subscriber_group: str | None = None,
        max_time_since_last_seen: timedelta | None = None,
    ) -> Sequence[EventSubscriberState]:
        """logicblocks' ``list``, reading partitions too."""
        filters: builtins.list[FilterClause] = []
        if subscriber_group is not None:
            filters.append(
                FilterClause(Operator.EQUAL, Path("group"), subscriber_group)
            )
        if max_time_since_last_seen is not None:
            filters.append(
                FilterClause(
                    Operator.GREATER_THAN,
                    Path("last_seen"),
                    self.clock.now(UTC) - max_time_since_last_seen,
                )
            )
        rows = await _rows(self, Search(filters=filters))
        return [
            EventSubscriberState(
                id=row["id"],
                group=row["group"],
                node_id=row["node_id"],
                subscription_requests=[
                    source_identifier(request)
                    for request in row["subscription_requests"]
                ],
                last_seen=row["last_seen"],
            )
            for row in rows
        ]


class AutocommitSubscriptionStateStore(PostgresEventSubscriptionStateStore):
    """logicblocks' subscription state store; each call one autocommitted statement,
    except ``apply``, whose changes commit together."""

    def __init__(self, *, node_id: str, connection_pool: Pool) -> None:
        super().__init__(
            node_id=node_id,
            connection_source=cast(Pool, AutocommitConnections(connection_pool)),
        )
        self._transactional_pool = connection_pool

    async def list(self) -> Sequence[EventSubscriptionState]:
        """logicblocks' ``list``, reading partitions too."""
        return [
            EventSubscriptionState(
                id=row["id"],
                group=row["group"],
                node_id=row["node_id"],
                event_sources=[
                    source_identifier(source) for source in row["event_sources"]
                ],
            )
            for row in await _rows(self, Search(filters=[]))
        ]

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


async def _rows(
    store: PostgresEventSubscriberStateStore | PostgresEventSubscriptionStateStore,
    search: Search,
) -> builtins.list[dict[str, Any]]:
    query = store.query_converter.convert_query(search)
    async with (
        store.connection_pool.connection() as connection,
        connection.cursor(row_factory=dict_row) as cursor,
    ):
        await cursor.execute(*query)
        return await cursor.fetchall()
