"""Pins the logicblocks 0.1.11 internals this package relies on.

If an upgrade of logicblocks changes one of them, these tests say which workaround
needs revisiting.
"""

import asyncio
import hashlib
from typing import Any

import pytest
from logicblocks.event.processing import EventSubscriptionConsumer, InMemoryLockManager
from logicblocks.event.processing.broker.strategies.distributed import (
    COORDINATOR_LOCK_NAME,
    DefaultEventSubscriptionCoordinator,
    EventSubscriptionState,
    InMemoryEventSubscriberStateStore,
    InMemoryEventSubscriptionStateStore,
)
from logicblocks.event.processing.locks.postgres import get_digest
from logicblocks.event.store import EventStore, InMemoryEventStorageAdapter
from logicblocks.event.types import CategoryIdentifier, NewEvent, StoredEvent

from eventcomposition import InMemoryClusterState
from eventcomposition.broker import leadership
from eventcomposition.broker.leader import (
    COORDINATOR_LOCK_KEY,
    advisory_lock_key,
    leading_coordinator,
)
from eventcomposition.broker.leader import COORDINATOR_LOCK_NAME as our_lock_name
from eventcomposition.consumers.partitions import CategoryPartition, partition_of


async def test_the_coordinator_distributes_through_its_public_distribute() -> None:
    # eventcomposition.broker.leadership.LeaderCheckingCoordinator checks its
    # leadership by overriding distribute(): coordinate() must call it.
    distributed = asyncio.Event()

    class Recording(DefaultEventSubscriptionCoordinator):
        async def distribute(self) -> None:
            distributed.set()

    coordinator = Recording(
        node_id="node",
        lock_manager=InMemoryLockManager(),
        subscriber_state_store=InMemoryEventSubscriberStateStore(node_id="node"),
        subscription_state_store=InMemoryEventSubscriptionStateStore(node_id="node"),
    )
    task = asyncio.create_task(coordinator.coordinate())
    try:
        await asyncio.wait_for(distributed.wait(), timeout=5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize(
    "name", [COORDINATOR_LOCK_NAME, "some lock", "", "projection:orders-view", "ünï"]
)
def test_the_lock_key_is_logicblocks_digest_of_the_lock_name(name: str) -> None:
    # eventcomposition.broker.leader repeats get_digest (a function of
    # logicblocks.event.processing.locks.postgres, not exported by the package,
    # whose import would cost `cluster status` the whole processing package): our
    # lock manager and `cluster status` take its keys, logicblocks' own lock
    # manager get_digest's, and mixed clusters need them to agree.
    # tests/integration/test_leadership.py checks it against a server.
    expected = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 10**16

    assert get_digest(name) == expected
    assert advisory_lock_key(name) == get_digest(name)


def test_the_coordinator_lock_is_logicblocks_and_its_key_that_names_digest() -> None:
    # The coordinator (logicblocks' and ours) takes its lock under logicblocks'
    # name; verify_leadership and `cluster status` look for it under ours.
    assert our_lock_name == COORDINATOR_LOCK_NAME
    assert get_digest(COORDINATOR_LOCK_NAME) == COORDINATOR_LOCK_KEY
    # The broker's module hands on the light module's facts, not copies.
    assert leadership.COORDINATOR_LOCK_KEY is COORDINATOR_LOCK_KEY
    assert leadership.leading_coordinator is leading_coordinator


def test_in_memory_subscriber_state_store_keeps_records_in_subscribers() -> None:
    store = InMemoryEventSubscriberStateStore(node_id="node")

    assert store.subscribers == []


def test_in_memory_subscription_state_store_keeps_records_in_subscriptions() -> None:
    store: Any = InMemoryEventSubscriptionStateStore(node_id="node")

    assert store._subscriptions == {}


async def test_cluster_state_views_share_records_across_nodes() -> None:
    state = InMemoryClusterState()
    coordinator_view = state.subscription_state_store("coordinator")
    observer_view = state.subscription_state_store("observer")
    subscription = EventSubscriptionState(
        group="g",
        id="s",
        node_id="observer",
        event_sources=[CategoryIdentifier(category="orders")],
    )

    await coordinator_view.add(subscription)

    assert [s.key for s in await observer_view.list()] == [subscription.key]
    assert [s.key for s in state.subscriptions()] == [subscription.key]


def _never_called(source: Any) -> Any:
    raise AssertionError("no source was accepted")


def test_subscription_consumer_keeps_its_source_consumers_in_delegates() -> None:
    # eventcomposition.consumers.subscription.MultiSourceSubscriptionConsumer iterates these.
    consumer: Any = EventSubscriptionConsumer[StoredEvent](
        group="g",
        id="s",
        subscription_requests=[CategoryIdentifier(category="orders")],
        delegate_factory=_never_called,
    )

    assert consumer._delegates == {}


async def test_in_memory_adapter_keeps_its_events_in_db_with_last_event() -> None:
    # eventcomposition.lag.InMemoryHeadReader reads heads from it without a copy.
    from logicblocks.event.types import LogIdentifier, NewEvent, StreamIdentifier

    from eventcomposition.lag import EventStoreHeadReader, InMemoryHeadReader

    adapter = InMemoryEventStorageAdapter()
    store = EventStore(adapter=adapter)
    for stream in ("o-1", "o-2", "o-1"):
        await store.stream(category="orders", stream=stream).publish(
            events=[NewEvent(name="placed", payload={})]
        )
    await store.stream(category="payments", stream="p-1").publish(
        events=[NewEvent(name="paid", payload={})]
    )
    sources = [
        LogIdentifier(),
        CategoryIdentifier(category="orders"),
        CategoryIdentifier(category="nothing"),
        StreamIdentifier(category="orders", stream="o-2"),
        StreamIdentifier(category="orders", stream="o-9"),
        # Of 4 partitions, o-1 is in 3 and o-2 in 1; 0 is empty.
        CategoryPartition("orders", partition_of("o-1", 4), 4),
        CategoryPartition("orders", partition_of("o-2", 4), 4),
        CategoryPartition("orders", 0, 4),
    ]

    in_place = await InMemoryHeadReader(adapter).heads(sources)

    assert callable(adapter._db.last_event)
    assert callable(adapter._db._select_index)
    assert in_place == await EventStoreHeadReader(adapter).heads(sources)
    assert list(in_place.values()) == [3, 2, None, 1, None, 2, 1, None]


def test_postgres_state_stores_read_back_only_log_category_and_stream() -> None:
    # eventcomposition.broker.stores reads the subscribers and subscriptions tables
    # itself: logicblocks' stores deserialise with event_sequence_identifier, which
    # refuses any other source, and its own CategoryPartitionIdentifier drops the
    # category when serialised.
    from logicblocks.event.processing.broker.strategies.distributed.subscribers.stores.state import (
        postgres as subscribers,
    )
    from logicblocks.event.processing.broker.strategies.distributed.subscriptions.stores.state import (
        postgres as subscriptions,
    )
    from logicblocks.event.types.identifier import (
        CategoryPartitionIdentifier,
        StreamNamePrefixPartitionIdentifier,
        event_sequence_identifier,
    )

    for module in (subscribers, subscriptions):
        assert vars(module)["event_sequence_identifier"] is event_sequence_identifier
    with pytest.raises(ValueError, match="Invalid serialised"):
        event_sequence_identifier(
            CategoryPartition("orders", 1, 4).serialise()  # type: ignore[arg-type]
        )
    theirs = CategoryPartitionIdentifier(
        category="orders", partition=StreamNamePrefixPartitionIdentifier("o-")
    ).serialise()
    assert isinstance(theirs, dict)
    assert "category" not in theirs


def test_the_event_source_factory_maps_identifier_types_to_constructors() -> None:
    # eventcomposition.broker.stores.event_source_factory registers partitions.
    from logicblocks.event.store import EventStoreEventSourceFactory

    from eventcomposition.broker.stores import event_source_factory
    from eventcomposition.consumers.partitions import PartitionEventSource

    adapter = InMemoryEventStorageAdapter()
    partition = CategoryPartition("orders", 1, 4)
    with pytest.raises(KeyError):
        EventStoreEventSourceFactory(adapter=adapter).construct(partition)
    source = event_source_factory(adapter).construct(partition)
    assert isinstance(source, PartitionEventSource)
    assert source.identifier == partition


def test_the_settings_name_every_isolation_mode_of_logicblocks() -> None:
    # eventcomposition.settings names IsolationMode's members without importing
    # it (importing it imports logicblocks' broker); the mapping turns the name
    # into the member.
    from logicblocks.event.processing import IsolationMode

    from eventcomposition.settings.models import IsolationModeName

    assert [name.name for name in IsolationModeName] == [
        mode.name for mode in IsolationMode
    ]


async def test_the_in_memory_adapter_numbers_under_its_write_locks() -> None:
    # eventcomposition.consumers.visibility.InMemoryVisibilityHorizon reads the
    # adapter's private _sequence (the next number) and _locks (aiologic locks held
    # from taking a write's numbers until it commits), and StoreEventReader finds
    # the adapter through EventStore's private _adapter.
    adapter = InMemoryEventStorageAdapter()
    store = EventStore(adapter=adapter)
    assert store._adapter is adapter
    assert adapter._sequence._value == 0
    seen_locked: list[bool] = []

    async def watch() -> None:
        while not seen_locked or not seen_locked[-1]:
            seen_locked.append(any(lock.locked() for lock in adapter._locks.values()))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    await store.stream(category="c", stream="s").publish(
        events=[NewEvent(name="n", payload={}) for _ in range(3)]
    )
    await asyncio.wait_for(watcher, timeout=5)

    assert adapter._sequence._value == 3
    assert any(seen_locked)
    assert not any(lock.locked() for lock in adapter._locks.values())
