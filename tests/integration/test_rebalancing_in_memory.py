"""Observers join and leave a running in-memory cluster; the balancing coordinator
spreads the sources over them in staged hand-overs.

The brokers are put together from logicblocks' public parts around the balancing
coordinator. Every subscriber checks, as a source reaches it, that no other
subscriber holds it; the allocation is sampled after every distribution.
"""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import pytest_asyncio
from logicblocks.event.processing.broker.strategies.distributed import (
    DefaultEventSubscriberManager,
    DefaultEventSubscriptionObserver,
    EventSubscriptionState,
)
from logicblocks.event.processing.broker.subscribers import (
    InMemoryEventSubscriberStore,
)
from logicblocks.event.sources import EventSource
from logicblocks.event.store import EventStoreEventSourceFactory
from logicblocks.event.types import (
    CategoryIdentifier,
    EventSourceIdentifier,
    StoredEvent,
)

from eventcomposition import BrokerRole, DistributedEventBroker, InMemoryClusterState
from eventcomposition.broker.balancing import (
    BalancingEventSubscriptionCoordinator,
    MovingSource,
    default_release_grace,
)
from eventcomposition.testing.capture import CapturingSubscriber
from eventcomposition.testing.waiting import wait_until

FAST = timedelta(milliseconds=100)
# Observers synchronise slower than the coordinator distributes, so a hand-over
# that did not wait for the old holder would show as two holders at once.
SYNCHRONISATION = timedelta(milliseconds=300)
SOURCES = [CategoryIdentifier(f"orders-{n:02d}") for n in range(12)]
GROUP = "order-totals"


@dataclass
class Holdings:
    """Who holds what right now, as the subscribers see it; overlaps recorded."""

    current: dict[EventSourceIdentifier, str] = field(default_factory=dict)
    overlaps: list[str] = field(default_factory=list)


class ExclusiveSubscriber(CapturingSubscriber):
    def __init__(self, name: str, holdings: Holdings) -> None:
        super().__init__(GROUP, name, SOURCES)
        self._holdings = holdings

    async def accept(
        self, source: EventSource[EventSourceIdentifier, StoredEvent]
    ) -> None:
        holder = self._holdings.current.get(source.identifier)
        if holder is not None and holder != self.id:
            self._holdings.overlaps.append(f"{source.identifier} {holder}+{self.id}")
        self._holdings.current[source.identifier] = self.id
        await super().accept(source)

    async def withdraw(
        self, source: EventSource[EventSourceIdentifier, StoredEvent]
    ) -> None:
        if self._holdings.current.get(source.identifier) == self.id:
            del self._holdings.current[source.identifier]
        await super().withdraw(source)

    def forget_all(self) -> None:
        # A stopped node's subscriber holds nothing any more.
        for source in self.sources:
            if self._holdings.current.get(source) == self.id:
                del self._holdings.current[source]
        self.sources.clear()


@dataclass(frozen=True)
class Sample:
    subscriptions: list[EventSubscriptionState]
    moving: list[MovingSource]
    actually_held: dict[EventSourceIdentifier, str]


class SampledCoordinator(BalancingEventSubscriptionCoordinator):
    """Records the allocation, the moving sources and who actually holds what,
    after every distribution."""

    samples: list[Sample]
    state: InMemoryClusterState
    holdings: Holdings

    async def distribute(self) -> None:
        await super().distribute()
        self.samples.append(
            Sample(
                list(self.state.subscriptions()),
                self.moving(),
                dict(self.holdings.current),
            )
        )


def balancing_broker(
    state: InMemoryClusterState, holdings: Holdings, node_id: str, role: BrokerRole
) -> tuple[DistributedEventBroker[StoredEvent], SampledCoordinator]:
    subscriber_store: InMemoryEventSubscriberStore[StoredEvent] = (
        InMemoryEventSubscriberStore()
    )
    subscription_state_store = state.subscription_state_store(node_id)
    manager = DefaultEventSubscriberManager(
        node_id=node_id,
        subscriber_store=subscriber_store,
        subscriber_state_store=state.subscriber_state_store(node_id),
        heartbeat_interval=FAST,
    )
    coordinator = SampledCoordinator(
        node_id=node_id,
        lock_manager=state.lock_manager,
        subscriber_state_store=state.subscriber_state_store(node_id),
        subscription_state_store=subscription_state_store,
        subscriber_max_time_since_last_seen=timedelta(seconds=3),
        distribution_interval=FAST,
        leadership_attempt_interval=FAST,
        max_moves_per_distribution=32,
        release_grace=default_release_grace(SYNCHRONISATION),
    )
    coordinator.samples = []
    coordinator.state = state
    coordinator.holdings = holdings
    observer = DefaultEventSubscriptionObserver(
        node_id=node_id,
        subscriber_store=subscriber_store,
        subscription_state_store=subscription_state_store,
        event_source_factory=EventStoreEventSourceFactory(adapter=state.adapter),
        synchronisation_interval=SYNCHRONISATION,
    )
    broker = DistributedEventBroker[StoredEvent](
        event_subscriber_manager=manager,
        event_subscription_coordinator=coordinator,
        event_subscription_observer=observer,
        role=role,
    )
    return broker, coordinator


@dataclass
class Cluster:
    state: InMemoryClusterState = field(default_factory=InMemoryClusterState)
    holdings: Holdings = field(default_factory=Holdings)
    subscribers: dict[str, ExclusiveSubscriber] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    coordinator: SampledCoordinator | None = None

    async def start_coordinator(self) -> SampledCoordinator:
        broker, self.coordinator = balancing_broker(
            self.state, self.holdings, "coordinator", BrokerRole.COORDINATOR
        )
        self.tasks["coordinator"] = asyncio.create_task(broker.execute())
        return self.coordinator

    async def start_observer(self, name: str) -> None:
        broker, _ = balancing_broker(
            self.state, self.holdings, name, BrokerRole.OBSERVER
        )
        subscriber = ExclusiveSubscriber(name, self.holdings)
        await broker.register(subscriber)
        self.subscribers[name] = subscriber
        self.tasks[name] = asyncio.create_task(broker.execute())

    async def stop(self, name: str) -> None:
        # A stopping node stops processing first (its runtime stops its consumers).
        if name in self.subscribers:
            self.subscribers.pop(name).forget_all()
        task = self.tasks.pop(name)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def counts(self) -> dict[str, int]:
        return {name: len(s.sources) for name, s in self.subscribers.items()}

    async def wait_for_counts(self, expected: dict[str, int]) -> int:
        """Wait until the subscribers hold ``expected``; the distributions it took."""
        assert self.coordinator is not None
        before = len(self.coordinator.samples)
        await wait_until(
            lambda: self.counts() == expected, timeout=10, description=str(expected)
        )
        return len(self.coordinator.samples) - before


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[Cluster]:
    cluster = Cluster()
    try:
        yield cluster
    finally:
        for name in list(cluster.tasks):
            await cluster.stop(name)


async def test_observers_joining_and_leaving_get_a_fair_share(cluster: Cluster) -> None:
    await cluster.start_observer("observer-1")
    await cluster.start_observer("observer-2")
    coordinator = await cluster.start_coordinator()
    await cluster.wait_for_counts({"observer-1": 6, "observer-2": 6})

    await cluster.start_observer("observer-3")
    # Revoke, wait the grace (five distributions), assign.
    joined = await cluster.wait_for_counts(
        {"observer-1": 4, "observer-2": 4, "observer-3": 4}
    )
    assert joined <= 12
    changes = coordinator.allocation_changes_total

    await cluster.start_observer("observer-4")
    await cluster.wait_for_counts({f"observer-{n}": 3 for n in range(1, 5)})
    # Each of the three holders gave up one source, which the newcomer got.
    assert coordinator.allocation_changes_total - changes == 6

    await cluster.stop("observer-2")
    await cluster.wait_for_counts({"observer-1": 4, "observer-3": 4, "observer-4": 4})

    assert cluster.holdings.overlaps == []
    assert set(cluster.holdings.current) == set(SOURCES)
    assert any(sample.moving for sample in coordinator.samples)
    for sample in coordinator.samples:
        allocated = {
            source: subscription.id
            for subscription in sample.subscriptions
            for source in subscription.event_sources
        }
        assert len(allocated) == sum(len(s.event_sources) for s in sample.subscriptions)
        assert not {m.source for m in sample.moving} & set(allocated)
        # Nothing is allocated while another subscriber still processes it.
        for source, subscriber_id in allocated.items():
            assert sample.actually_held.get(source, subscriber_id) == subscriber_id
