"""EventRuntime over a real role-aware in-memory broker and a real ServiceManager."""

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta

import pytest
import structlog
from logicblocks.event.processing import (
    EventBrokerStorageType,
    EventBrokerType,
    EventConsumerState,
    EventProcessor,
    EventSubscriptionConsumer,
    IsolationMode,
    ProcessStatus,
    ServiceManager,
    make_event_store_subscriber,
)
from logicblocks.event.store import EventStore
from logicblocks.event.types import CategoryIdentifier, NewEvent, StoredEvent

from eventcomposition import (
    DistributedEventBrokerSettings,
    EventConsumerSettings,
    EventRuntime,
    InMemoryClusterState,
    make_event_broker,
)
from eventcomposition.runtime import BROKER_SERVICE_NAME
from eventcomposition.testing.waiting import wait_until

NODE_ID = "node-1"

BROKER_SETTINGS = DistributedEventBrokerSettings(
    subscriber_manager_heartbeat_interval=timedelta(milliseconds=100),
    subscriber_manager_purge_interval=timedelta(milliseconds=200),
    subscriber_manager_subscriber_max_age=timedelta(seconds=5),
    coordinator_subscriber_max_time_since_last_seen=timedelta(seconds=2),
    coordinator_distribution_interval=timedelta(milliseconds=100),
    coordinator_leadership_max_duration=timedelta(minutes=1),
    coordinator_leadership_attempt_interval=timedelta(milliseconds=100),
    observer_synchronisation_interval=timedelta(milliseconds=100),
)

CONSUMER_SETTINGS = EventConsumerSettings(
    poll_interval=timedelta(milliseconds=20), stop_timeout=timedelta(seconds=5)
)


# --- helpers ----------------------------------------------------------------------


class PoisonEventError(Exception):
    pass


class RecordingProcessor(EventProcessor[StoredEvent]):
    """Records what it processes; raises on the event names in ``fail_on``.

    ``delay`` slows each event down; ``rendezvous`` makes the first event wait for
    the other processors sharing the barrier (only concurrent consumers meet).
    """

    def __init__(
        self,
        *,
        fail_on: Iterable[str] = (),
        delay: float = 0.0,
        rendezvous: asyncio.Barrier | None = None,
    ) -> None:
        self.fail_on = frozenset(fail_on)
        self.delay = delay
        self.rendezvous = rendezvous
        self.processed: list[StoredEvent] = []
        self.failures = 0
        self.threads: set[int] = set()
        self.started = threading.Event()

    async def process_event(self, event: StoredEvent) -> None:
        self.threads.add(threading.get_ident())
        self.started.set()
        if self.rendezvous is not None:
            rendezvous, self.rendezvous = self.rendezvous, None
            await rendezvous.wait()
        if event.name in self.fail_on:
            self.failures += 1
            raise PoisonEventError(f"cannot process {event.name}")
        if self.delay:
            await asyncio.sleep(self.delay)
        self.processed.append(event)

    @property
    def names(self) -> list[str]:
        return [event.name for event in self.processed]


def subscriber(
    store: EventStore, group: str, category: str, processor: RecordingProcessor
) -> EventSubscriptionConsumer[StoredEvent]:
    return make_event_store_subscriber(
        subscriber_group=group,
        subscription_request=CategoryIdentifier(category=category),
        subscriber_state_category=store.category(category=f"{group}-state"),
        event_processor=processor,
    )


async def publish(
    store: EventStore, category: str, *names: str, stream: str = "stream-1"
) -> list[StoredEvent]:
    return list(
        await store.stream(category=category, stream=stream).publish(
            events=[NewEvent(name=name, payload={"name": name}) for name in names]
        )
    )


async def saved_sequence_number(store: EventStore, group: str) -> object:
    event = (
        await store.category(category=f"{group}-state")
        .stream(stream="default")
        .latest()
    )
    if event is None:
        return None
    return EventConsumerState.deserialise(event.payload).state["last_sequence_number"]


def node_subscribers(cluster: InMemoryClusterState, node_id: str) -> list[str]:
    return [
        f"{state.group}/{state.id}"
        for state in cluster.subscribers()
        if state.node_id == node_id
    ]


# --- fixtures ---------------------------------------------------------------------


@pytest.fixture
def cluster() -> InMemoryClusterState:
    return InMemoryClusterState()


@pytest.fixture
def store(cluster: InMemoryClusterState) -> EventStore:
    return EventStore(adapter=cluster.adapter)


@pytest.fixture
async def runtime(cluster: InMemoryClusterState) -> AsyncIterator[EventRuntime]:
    broker = make_event_broker(
        NODE_ID,
        EventBrokerType.Distributed,
        EventBrokerStorageType.InMemory,
        settings=BROKER_SETTINGS,
        cluster_state=cluster,
    )
    runtime = EventRuntime(
        NODE_ID, broker, ServiceManager(), default_consumer_settings=CONSUMER_SETTINGS
    )
    yield runtime
    await runtime.stop()


# --- tests ------------------------------------------------------------------------


async def test_events_flow_through_a_registered_subscription_consumer(
    runtime: EventRuntime, store: EventStore
) -> None:
    processor = RecordingProcessor()
    consumer = subscriber(store, "orders-projection", "orders", processor)
    name = await runtime.register_subscription_consumer(consumer)
    await publish(store, "orders", "order-placed", "order-paid")

    await runtime.start()
    await wait_until(lambda: len(processor.processed) == 2, description="2 events")
    await publish(store, "orders", "order-shipped")
    await wait_until(lambda: len(processor.processed) == 3, description="3 events")

    assert processor.names == ["order-placed", "order-paid", "order-shipped"]
    assert name == f"orders-projection/{consumer.id}"
    await wait_until(
        lambda: runtime.status is ProcessStatus.RUNNING, description="RUNNING"
    )
    assert runtime.service_statuses == {
        name: ProcessStatus.RUNNING,
        BROKER_SERVICE_NAME: ProcessStatus.RUNNING,
    }


async def test_several_subscription_consumers_process_concurrently(
    runtime: EventRuntime, store: EventStore
) -> None:
    # Each processor's first event waits for the others' first events: the test
    # only completes if the consumers run at the same time.
    rendezvous = asyncio.Barrier(3)
    processors = {
        category: RecordingProcessor(rendezvous=rendezvous)
        for category in ("orders", "payments", "shipments")
    }
    for category, processor in processors.items():
        await runtime.register_subscription_consumer(
            subscriber(store, f"{category}-projection", category, processor)
        )
        await publish(store, category, f"{category}-1", f"{category}-2")

    await runtime.start()

    await wait_until(
        lambda: all(len(p.processed) == 2 for p in processors.values()),
        description="every consumer to process its two events",
    )
    for category, processor in processors.items():
        assert processor.names == [f"{category}-1", f"{category}-2"]


async def test_a_failing_processor_does_not_stop_the_other_consumers(
    runtime: EventRuntime, store: EventStore
) -> None:
    healthy = RecordingProcessor()
    failing = RecordingProcessor(fail_on={"payment-poisoned"})
    healthy_name = await runtime.register_subscription_consumer(
        subscriber(store, "orders-projection", "orders", healthy)
    )
    failing_name = await runtime.register_subscription_consumer(
        subscriber(store, "payments-projection", "payments", failing)
    )
    await publish(
        store, "payments", "payment-taken", "payment-poisoned", "payment-refunded"
    )
    await publish(store, "orders", "order-placed")

    with structlog.testing.capture_logs() as logs:
        await runtime.start()
        await wait_until(
            lambda: failing.failures >= 2,
            description="the failing consumer to keep polling (continue handler)",
        )
        await publish(store, "orders", "order-paid")
        await wait_until(
            lambda: healthy.names == ["order-placed", "order-paid"],
            description="the healthy consumer to process every event",
        )
        await wait_until(
            lambda: runtime.service_statuses[failing_name] is ProcessStatus.ERRORED,
            description="the failing consumer to show as ERRORED",
        )
        await wait_until(
            lambda: runtime.service_statuses[healthy_name] is ProcessStatus.RUNNING,
            description="the healthy consumer to show as RUNNING",
        )
        assert runtime.status is ProcessStatus.ERRORED

    assert "payment-refunded" not in failing.names
    assert "payment-taken" in failing.names
    assert any(
        log["event"] == "consumer.failed" and log["service"] == failing_name
        for log in logs
    )
    assert not any(
        log["event"] == "consumer.failed" and log["service"] == healthy_name
        for log in logs
    )


async def test_stop_removes_the_node_subscribers_and_saves_consumer_state(
    runtime: EventRuntime, cluster: InMemoryClusterState, store: EventStore
) -> None:
    processor = RecordingProcessor()
    consumer = subscriber(store, "orders-projection", "orders", processor)
    name = await runtime.register_subscription_consumer(consumer)
    published = await publish(store, "orders", "order-placed", "order-paid")

    await runtime.start()
    await wait_until(lambda: len(processor.processed) == 2, description="2 events")
    assert node_subscribers(cluster, NODE_ID) == [f"orders-projection/{consumer.id}"]
    assert NODE_ID in cluster.sources_by_node()

    await runtime.stop()

    assert node_subscribers(cluster, NODE_ID) == []
    assert NODE_ID not in cluster.sources_by_node()
    assert await saved_sequence_number(store, "orders-projection") == (
        published[-1].sequence_number
    )
    assert runtime.status is ProcessStatus.STOPPED
    assert runtime.service_statuses == {
        name: ProcessStatus.STOPPED,
        BROKER_SERVICE_NAME: ProcessStatus.STOPPED,
    }


async def test_async_with_starts_and_stops_the_runtime(
    runtime: EventRuntime, cluster: InMemoryClusterState, store: EventStore
) -> None:
    processor = RecordingProcessor()
    await runtime.register_subscription_consumer(
        subscriber(store, "orders-projection", "orders", processor)
    )
    await publish(store, "orders", "order-placed")

    async with runtime:
        await wait_until(lambda: len(processor.processed) == 1, description="1 event")
        await wait_until(
            lambda: runtime.status is ProcessStatus.RUNNING, description="RUNNING"
        )

    assert runtime.stopped
    assert runtime.status is ProcessStatus.STOPPED
    assert node_subscribers(cluster, NODE_ID) == []


async def test_a_dedicated_thread_consumer_drains_on_stop(
    runtime: EventRuntime, store: EventStore
) -> None:
    processor = RecordingProcessor(delay=0.03)
    await runtime.register_subscription_consumer(
        subscriber(store, "orders-projection", "orders", processor),
        EventConsumerSettings(
            poll_interval=timedelta(milliseconds=20),
            isolation_mode=IsolationMode.DEDICATED_THREAD,
            stop_timeout=timedelta(seconds=5),
        ),
    )
    published = await publish(store, "orders", *(f"order-{i}" for i in range(8)))

    await runtime.start()
    await wait_until(processor.started.is_set, description="processing to start")
    await runtime.stop()

    # The consume_all in progress at stop ran to its end, and saved its state.
    assert processor.names == [f"order-{i}" for i in range(8)]
    assert threading.get_ident() not in processor.threads
    assert await saved_sequence_number(store, "orders-projection") == (
        published[-1].sequence_number
    )
