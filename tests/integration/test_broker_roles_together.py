"""Coordinator-only and observer-only nodes cooperating, in memory and on PostgreSQL.

Every test runs twice: over one process's shared in-memory cluster state, and over a
real PostgreSQL database (a fresh one per test).
"""

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from logicblocks.event.processing import (
    EventBroker,
    ProcessStatus,
    ServiceManager,
)
from logicblocks.event.processing.broker import EventBrokerStorageType, EventBrokerType
from logicblocks.event.processing.broker.strategies.distributed import (
    EventSubscriptionState,
    EventSubscriptionStateStore,
    PostgresEventSubscriptionStateStore,
)
from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.types import CategoryIdentifier, NewEvent, StoredEvent
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition import (
    BrokerRole,
    DistributedEventBrokerSettings,
    EventConsumerSettings,
    EventRuntime,
    InMemoryClusterState,
    make_event_broker,
)
from eventcomposition.consumers import make_subscription_consumer
from eventcomposition.testing.capture import CapturingProcessor
from eventcomposition.testing.postgres import ConnectionInfo
from eventcomposition.testing.waiting import wait_until

FAST = timedelta(milliseconds=100)


def fast_settings(role: BrokerRole) -> DistributedEventBrokerSettings:
    return DistributedEventBrokerSettings(
        role=role,
        subscriber_manager_heartbeat_interval=FAST,
        coordinator_distribution_interval=FAST,
        coordinator_leadership_attempt_interval=FAST,
        observer_synchronisation_interval=FAST,
        coordinator_subscriber_max_time_since_last_seen=timedelta(seconds=3),
    )


@dataclass
class Cluster:
    """Makes nodes that share one storage: in memory or a PostgreSQL database."""

    event_store: EventStore
    memory: InMemoryClusterState | None = None
    database: ConnectionInfo | None = None
    pool: AsyncConnectionPool[AsyncConnection[Any]] | None = None

    def broker(self, node_id: str, role: BrokerRole) -> EventBroker[StoredEvent]:
        if self.memory is not None:
            return make_event_broker(
                node_id,
                EventBrokerType.Distributed,
                EventBrokerStorageType.InMemory,
                settings=fast_settings(role),
                cluster_state=self.memory,
            )
        assert self.database is not None
        assert self.pool is not None
        return make_event_broker(
            node_id,
            EventBrokerType.Distributed,
            EventBrokerStorageType.Postgres,
            settings=fast_settings(role),
            connection_settings=self.database.connection_settings(),
            connection_pool=self.pool,
        )

    def node(self, node_id: str, role: BrokerRole) -> EventRuntime:
        return EventRuntime(
            node_id,
            self.broker(node_id, role),
            ServiceManager(),
            EventConsumerSettings(poll_interval=timedelta(milliseconds=50)),
        )

    def subscription_store(self) -> EventSubscriptionStateStore:
        if self.memory is not None:
            return self.memory.subscription_state_store("test-reader")
        assert self.pool is not None
        return PostgresEventSubscriptionStateStore(
            node_id="test-reader", connection_source=self.pool
        )

    async def subscriptions(self, group: str) -> Sequence[EventSubscriptionState]:
        return [s for s in await self.subscription_store().list() if s.group == group]

    async def publish(self, category: str, count: int) -> set[str]:
        stored = await self.event_store.stream(
            category=category, stream="stream-1"
        ).publish(
            events=[NewEvent(name="placed", payload={"n": n}) for n in range(count)]
        )
        return {event.id for event in stored}


@pytest.fixture(params=["memory", "postgres"])
def storage_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def database(
    storage_kind: str, request: pytest.FixtureRequest
) -> ConnectionInfo | None:
    # Requested here, in a synchronous fixture, so that only the PostgreSQL runs
    # start a server (and outside the event loop, as the server fixtures need).
    if storage_kind != "postgres":
        return None
    info: ConnectionInfo = request.getfixturevalue("postgres_database")
    return info


@pytest_asyncio.fixture
async def cluster(database: ConnectionInfo | None) -> AsyncIterator[Cluster]:
    if database is None:
        state = InMemoryClusterState()
        yield Cluster(event_store=EventStore(adapter=state.adapter), memory=state)
        return
    pool = AsyncConnectionPool[AsyncConnection[Any]](
        database.conninfo, min_size=1, max_size=20, open=False
    )
    await pool.open(wait=True, timeout=30)
    try:
        yield Cluster(
            event_store=EventStore(
                adapter=PostgresEventStorageAdapter(connection_source=pool)
            ),
            database=database,
            pool=pool,
        )
    finally:
        await pool.close()


async def test_coordinator_allocates_and_observer_processes(cluster: Cluster) -> None:
    coordinator = cluster.node("coordinator", BrokerRole.COORDINATOR)
    observer = cluster.node("observer", BrokerRole.OBSERVER)
    processor = CapturingProcessor()
    await observer.register_subscription_consumer(
        make_subscription_consumer(
            event_store=cluster.event_store,
            subscriber_group="order-totals",
            subscription_requests=[CategoryIdentifier(category="orders")],
            event_processor=processor,
        )
    )
    published = await cluster.publish("orders", 10)

    async with coordinator, observer:
        await wait_until(lambda: processor.ids == published, description="all events")
        assert coordinator.event_broker.status is ProcessStatus.RUNNING
        [subscription] = await cluster.subscriptions("order-totals")

    # logicblocks stamps each allocation with the id of the node that made it.
    assert subscription.node_id == "coordinator"
    assert subscription.event_sources == [CategoryIdentifier(category="orders")]


async def test_one_coordinator_spreads_sources_over_three_observers(
    cluster: Cluster,
) -> None:
    categories = [f"orders-{n}" for n in range(6)]
    sources = [CategoryIdentifier(category=c) for c in categories]
    observers = [cluster.node(f"observer-{n}", BrokerRole.OBSERVER) for n in range(3)]
    processors = [CapturingProcessor(f"observer-{n}") for n in range(3)]
    audit = CapturingProcessor("audit")
    for observer, processor in zip(observers, processors, strict=True):
        await observer.register_subscription_consumer(
            make_subscription_consumer(
                event_store=cluster.event_store,
                subscriber_group="order-totals",
                subscription_requests=sources,
                event_processor=processor,
            )
        )
    await observers[0].register_subscription_consumer(
        make_subscription_consumer(
            event_store=cluster.event_store,
            subscriber_group="order-audit",
            subscription_requests=[sources[0]],
            event_processor=audit,
        )
    )
    published: set[str] = set()
    for category in categories:
        published |= await cluster.publish(category, 5)
    coordinator = cluster.node("coordinator", BrokerRole.COORDINATOR)

    for observer in observers:
        await observer.start()
    try:
        # The coordinator does not move sources it has allocated: start it once
        # every observer's subscriber has joined, so the first allocation spreads.
        await coordinator.start()

        def processed() -> set[str]:
            return set().union(*(p.ids for p in processors))

        await wait_until(lambda: processed() == published, description="all events")
        await wait_until(lambda: len(audit.events) == 5, description="audit events")
        totals = await cluster.subscriptions("order-totals")
        audits = await cluster.subscriptions("order-audit")
    finally:
        for node in [coordinator, *observers]:
            await node.stop()

    held = [set(s.event_sources) for s in totals]
    assert len(held) == 3
    assert all(len(sources_held) == 2 for sources_held in held)
    assert set().union(*held) == set(sources)
    assert [a.event_sources for a in audits] == [[sources[0]]]
    # Each event was processed by exactly one observer.
    assert sum(len(p.events) for p in processors) == len(published)


async def test_only_one_coordinator_leads_and_the_other_takes_over(
    cluster: Cluster,
) -> None:
    first = cluster.node("coordinator-1", BrokerRole.COORDINATOR)
    second = cluster.node("coordinator-2", BrokerRole.COORDINATOR)

    await first.start()
    try:
        await wait_until(lambda: first.event_broker.status is ProcessStatus.RUNNING)
        await second.start()
        await wait_until(lambda: second.event_broker.status is ProcessStatus.WAITING)
        assert first.event_broker.status is ProcessStatus.RUNNING
    finally:
        await first.stop()

    late_observer = cluster.node("observer", BrokerRole.OBSERVER)
    processor = CapturingProcessor()
    await late_observer.register_subscription_consumer(
        make_subscription_consumer(
            event_store=cluster.event_store,
            subscriber_group="late-group",
            subscription_requests=[CategoryIdentifier(category="late")],
            event_processor=processor,
        )
    )
    published = await cluster.publish("late", 3)
    async with late_observer:
        try:
            await wait_until(
                lambda: second.event_broker.status is ProcessStatus.RUNNING,
                description="the second coordinator to lead",
            )
            await wait_until(lambda: processor.ids == published)
        finally:
            await second.stop()
