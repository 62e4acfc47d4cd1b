"""The balancing coordinator over logicblocks' PostgreSQL state stores.

Distributions are driven by hand, under the real leadership lock, with a clock the
test controls for the release grace.
"""

from datetime import timedelta
from typing import Any

import pytest
from logicblocks.event.processing.broker.strategies.distributed import (
    COORDINATOR_LOCK_NAME,
    PostgresEventSubscriberStateStore,
    PostgresEventSubscriptionStateStore,
)
from logicblocks.event.types import CategoryIdentifier
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.broker.balancing import BalancingEventSubscriptionCoordinator
from eventcomposition.broker.leadership import (
    CheckedPostgresLockManager,
    LeadershipLostError,
)
from eventcomposition.testing.capture import CapturingSubscriber
from eventcomposition.testing.postgres import ConnectionInfo

pytestmark = pytest.mark.postgres

SOURCES = [CategoryIdentifier(f"orders-{n:02d}") for n in range(12)]
GRACE = timedelta(seconds=30)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_join_is_staged_through_postgres_under_the_leadership_lock(
    postgres_database: ConnectionInfo,
    postgres_pool: AsyncConnectionPool[AsyncConnection[Any]],
) -> None:
    def subscriber_store(node_id: str) -> PostgresEventSubscriberStateStore:
        return PostgresEventSubscriberStateStore(
            node_id=node_id, connection_source=postgres_pool
        )

    subscriptions = PostgresEventSubscriptionStateStore(
        node_id="coordinator", connection_source=postgres_pool
    )
    lock_manager = CheckedPostgresLockManager(
        connection_settings=postgres_database.connection_settings()
    )
    clock = Clock()
    coordinator = BalancingEventSubscriptionCoordinator(
        node_id="coordinator",
        lock_manager=lock_manager,
        subscriber_state_store=subscriber_store("coordinator"),
        subscription_state_store=subscriptions,
        release_grace=GRACE,
        clock=clock,
    )

    async def held() -> dict[str, int]:
        return {s.id: len(s.event_sources) for s in await subscriptions.list()}

    for name in ("a", "b"):
        await subscriber_store(f"node-{name}").add(
            CapturingSubscriber("totals", name, SOURCES)
        )

    async with lock_manager.try_lock(COORDINATOR_LOCK_NAME) as lock:
        assert lock.locked
        await coordinator.distribute()
        assert await held() == {"a": 6, "b": 6}
        changes = coordinator.allocation_changes_total

        # Sources read back from PostgreSQL compare equal: nothing is rewritten.
        await coordinator.distribute()
        assert coordinator.allocation_changes_total == changes

        await subscriber_store("node-c").add(
            CapturingSubscriber("totals", "c", SOURCES)
        )
        await coordinator.distribute()
        assert await held() == {"a": 4, "b": 4, "c": 0}

        clock.now += GRACE.total_seconds()
        await coordinator.distribute()
        assert await held() == {"a": 4, "b": 4, "c": 4}
        sources = [s for sub in await subscriptions.list() for s in sub.event_sources]
        assert sorted(sources, key=repr) == SOURCES

    with pytest.raises(LeadershipLostError):
        await coordinator.distribute()
