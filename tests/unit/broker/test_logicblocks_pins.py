"""Pins the logicblocks 0.1.11 internals this package relies on.

If an upgrade of logicblocks changes one of them, these tests say which workaround
needs revisiting.
"""

from typing import Any

from logicblocks.event.processing import EventSubscriptionConsumer
from logicblocks.event.processing.broker import DistributedEventBrokerSettings
from logicblocks.event.processing.broker.strategies.distributed import (
    EventSubscriptionState,
    InMemoryEventSubscriberStateStore,
    InMemoryEventSubscriptionStateStore,
)
from logicblocks.event.processing.broker.strategies.distributed.factories import (
    InMemoryDistributedEventBrokerBuilder,
)
from logicblocks.event.store import InMemoryEventStorageAdapter
from logicblocks.event.types import CategoryIdentifier, StoredEvent

from eventcomposition import InMemoryClusterState


def test_distributed_broker_keeps_its_parts_in_these_attributes() -> None:
    # eventcomposition.broker.builders takes the parts over from these.
    broker: Any = (
        InMemoryDistributedEventBrokerBuilder("node")
        .prepare(InMemoryEventStorageAdapter())
        .build(DistributedEventBrokerSettings())
    )

    assert broker._event_subscriber_manager is not None
    assert broker._event_subscription_coordinator is not None
    assert broker._event_subscription_observer is not None


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
    # eventcomposition.consumers.MultiSourceSubscriptionConsumer iterates these.
    consumer: Any = EventSubscriptionConsumer[StoredEvent](
        group="g",
        id="s",
        subscription_requests=[CategoryIdentifier(category="orders")],
        delegate_factory=_never_called,
    )

    assert consumer._delegates == {}


async def test_in_memory_adapter_keeps_its_events_in_db_with_last_event() -> None:
    # eventcomposition.lag.InMemoryHeadReader reads heads from it without a copy.
    from logicblocks.event.store import EventStore
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
    ]

    in_place = await InMemoryHeadReader(adapter).heads(sources)

    assert callable(adapter._db.last_event)
    assert in_place == await EventStoreHeadReader(adapter).heads(sources)
    assert list(in_place.values()) == [3, 2, None, 1, None]
