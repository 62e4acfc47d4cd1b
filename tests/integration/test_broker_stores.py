"""The broker's state stores in autocommit (``broker.stores``), on PostgreSQL.

Pins the logicblocks behaviour they rely on: its PostgreSQL subscriber and
subscription state stores reach their connections only through
``connection_pool.connection()``, so lending autocommit connections there takes
the transaction control off every single-statement call.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, cast

import pytest
from logicblocks.event.processing.broker.strategies.distributed import (
    EventSubscriptionState,
    EventSubscriptionStateChange,
    EventSubscriptionStateChangeType,
    PostgresEventSubscriberStateStore,
    PostgresEventSubscriptionStateStore,
)
from logicblocks.event.types import CategoryIdentifier
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from eventcomposition.broker.stores import AutocommitSubscriptionStateStore
from eventcomposition.connections import AutocommitConnections
from eventcomposition.testing.capture import CapturingSubscriber

pytestmark = pytest.mark.postgres

type Pool = AsyncConnectionPool[AsyncConnection[Any]]
SOURCES = [CategoryIdentifier("orders"), CategoryIdentifier("payments")]


class RecordingConnections(AutocommitConnections):
    """Counts the connections lent, and checks none ends inside a transaction."""

    lent = 0

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        async with super().connection() as connection:
            self.lent += 1
            assert connection.autocommit
            yield connection
            status = connection.pgconn.transaction_status
            assert status == TransactionStatus.IDLE


async def test_the_stores_take_every_connection_from_the_pool_given(
    postgres_pool: Pool,
) -> None:
    connections = RecordingConnections(postgres_pool)
    subscribers = PostgresEventSubscriberStateStore(
        node_id="node-a", connection_source=cast(Pool, connections)
    )
    subscriptions = PostgresEventSubscriptionStateStore(
        node_id="node-a", connection_source=cast(Pool, connections)
    )
    subscriber = CapturingSubscriber("totals", "a", SOURCES)

    await subscribers.add(subscriber)
    await subscribers.heartbeat(subscriber)
    assert [s.id for s in await subscribers.list()] == ["a"]
    await subscribers.purge(max_time_since_last_seen=timedelta(minutes=5))
    state = EventSubscriptionState(
        group="totals", id="a", node_id="node-a", event_sources=SOURCES[:1]
    )
    await subscriptions.add(state)
    await subscriptions.replace(
        EventSubscriptionState(
            group="totals", id="a", node_id="node-a", event_sources=SOURCES
        )
    )
    assert [s.event_sources for s in await subscriptions.list()] == [SOURCES]
    await subscriptions.remove(state)
    await subscribers.remove(subscriber)

    assert connections.lent == 9
    assert await subscribers.list() == []
    async with postgres_pool.connection() as connection:
        assert not connection.autocommit  # handed back as the pool lends them


async def test_apply_commits_its_changes_together(postgres_pool: Pool) -> None:
    store = AutocommitSubscriptionStateStore(
        node_id="coordinator", connection_pool=postgres_pool
    )
    await store.apply(
        changes=[
            EventSubscriptionStateChange(
                type=EventSubscriptionStateChangeType.ADD,
                subscription=EventSubscriptionState(
                    group="totals", id="a", node_id="n", event_sources=SOURCES[:1]
                ),
            )
        ]
    )
    failing = [
        EventSubscriptionStateChange(
            type=EventSubscriptionStateChangeType.REPLACE,
            subscription=EventSubscriptionState(
                group="totals", id="a", node_id="n", event_sources=SOURCES
            ),
        ),
        EventSubscriptionStateChange(
            type=EventSubscriptionStateChangeType.REMOVE,
            subscription=EventSubscriptionState(
                group="totals", id="missing", node_id="n", event_sources=[]
            ),
        ),
    ]

    with pytest.raises(ValueError, match="missing subscription"):
        await store.apply(changes=failing)

    # The replace before the failing removal was rolled back with it.
    assert [s.event_sources for s in await store.list()] == [SOURCES[:1]]
