"""Subscription consumers over several sources, with in-memory storage."""

from typing import Any

import pytest
from logicblocks.event.processing.consumers import EventSubscriptionConsumer
from logicblocks.event.sources import EventSource
from logicblocks.event.store import EventStore, InMemoryEventStorageAdapter
from logicblocks.event.store.exceptions import UnmetWriteConditionError
from logicblocks.event.types import (
    CategoryIdentifier,
    EventSourceIdentifier,
    NewEvent,
    StoredEvent,
)

from eventcomposition.consumers import (
    RestartingSourceConsumer,
    make_subscription_consumer,
    state_category_name,
)
from eventcomposition.metrics import PrometheusNodeMetrics
from eventcomposition.testing.capture import CapturingProcessor

GROUP = "totals"


def sources(*names: str) -> list[CategoryIdentifier]:
    return [CategoryIdentifier(category=name) for name in names]


async def publish(store: EventStore, category: str, count: int) -> set[str]:
    stored = await store.stream(category=category, stream="s").publish(
        events=[NewEvent(name="happened", payload={"n": n}) for n in range(count)]
    )
    return {event.id for event in stored}


async def accept_all(
    consumer: EventSubscriptionConsumer[StoredEvent],
    store: EventStore,
    identifiers: list[CategoryIdentifier],
) -> None:
    for identifier in identifiers:
        source: EventSource[EventSourceIdentifier, StoredEvent] = store.category(
            category=identifier.category
        )
        await consumer.accept(source)


@pytest.fixture
def store() -> EventStore:
    return EventStore(adapter=InMemoryEventStorageAdapter())


async def test_a_failing_source_does_not_stop_the_others(store: EventStore) -> None:
    processor = CapturingProcessor(fail_on=lambda event: event.category == "a")
    consumer = make_subscription_consumer(
        event_store=store,
        subscriber_group=GROUP,
        subscription_requests=sources("a", "b"),
        event_processor=processor,
    )
    await accept_all(consumer, store, sources("a", "b"))
    await publish(store, "a", 2)
    b_events = await publish(store, "b", 3)

    with pytest.raises(ValueError, match="refusing event"):
        await consumer.consume_all()

    assert processor.ids == b_events


async def test_several_failing_sources_fail_together(store: EventStore) -> None:
    processor = CapturingProcessor(fail_on=lambda event: True)
    consumer = make_subscription_consumer(
        event_store=store,
        subscriber_group=GROUP,
        subscription_requests=sources("a", "b"),
        event_processor=processor,
    )
    await accept_all(consumer, store, sources("a", "b"))
    await publish(store, "a", 1)
    await publish(store, "b", 1)

    with pytest.raises(ExceptionGroup) as raised:
        await consumer.consume_all()

    assert len(raised.value.exceptions) == 2
    assert "2 sources of totals/" in str(raised.value)


async def test_a_source_resumes_after_another_node_wrote_its_state(
    store: EventStore,
) -> None:
    processor = CapturingProcessor()
    consumer = make_subscription_consumer(
        event_store=store,
        subscriber_group=GROUP,
        subscription_requests=sources("a"),
        event_processor=processor,
    )
    await accept_all(consumer, store, sources("a"))
    await publish(store, "a", 2)
    await consumer.consume_all()
    # Another node, holding the source for a moment, saved the state stream too.
    state_stream = store.stream(
        category=state_category_name(GROUP, CategoryIdentifier(category="a")),
        stream="default",
    )
    latest = await state_stream.latest()
    assert latest is not None
    await state_stream.publish(
        events=[NewEvent(name=latest.name, payload=latest.payload)]
    )
    later = await publish(store, "a", 2)

    # This node's store still expects its own last write: the save fails once...
    with pytest.raises(UnmetWriteConditionError):
        await consumer.consume_all()
    # ...and the next poll starts afresh from the saved state and carries on.
    await publish(store, "a", 1)
    await consumer.consume_all()

    assert later <= processor.ids


async def test_a_restarting_source_consumer_makes_a_new_consumer_after_a_failure() -> (
    None
):
    made: list[Any] = []

    class Failing:
        async def consume_all(self) -> None:
            raise RuntimeError("broken")

    def make() -> Any:
        made.append(Failing())
        return made[-1]

    consumer = RestartingSourceConsumer(make)
    with pytest.raises(RuntimeError, match="broken"):
        await consumer.consume_all()

    assert len(made) == 2


def test_a_subscriber_needs_at_least_one_source(store: EventStore) -> None:
    with pytest.raises(ValueError, match="requests no event sources"):
        make_subscription_consumer(
            event_store=store,
            subscriber_group=GROUP,
            subscription_requests=[],
            event_processor=CapturingProcessor(),
        )


async def test_events_and_failures_are_recorded_in_the_metrics_given_later() -> None:
    # Declared without metrics, as an application does; the runtime hands its
    # node's metrics over at registration.
    store = EventStore(adapter=InMemoryEventStorageAdapter())
    consumer = make_subscription_consumer(
        event_store=store,
        subscriber_group=GROUP,
        subscription_requests=sources("orders", "payments"),
        event_processor=CapturingProcessor(
            fail_on=lambda event: event.category == "payments"
        ),
    )
    metrics = PrometheusNodeMetrics()
    consumer.use_metrics(metrics)
    consumer.use_metrics(PrometheusNodeMetrics())  # the first given stays
    await accept_all(consumer, store, sources("orders", "payments"))
    await publish(store, "orders", 3)
    await publish(store, "payments", 1)

    with pytest.raises(ValueError, match="refusing"):
        await consumer.consume_all()

    def value(name: str, source: str) -> float | None:
        return metrics.registry.get_sample_value(
            name, {"group": GROUP, "source": source}
        )

    assert value("eventcomposition_events_processed_total", "category:orders") == 3
    assert value("eventcomposition_consumer_errors_total", "category:payments") == 1
    assert value("eventcomposition_events_processed_total", "category:payments") is None


async def test_saved_positions_are_those_the_state_store_saved() -> None:
    store = EventStore(adapter=InMemoryEventStorageAdapter())
    consumer = make_subscription_consumer(
        event_store=store,
        subscriber_group=GROUP,
        subscription_requests=sources("orders", "payments"),
        event_processor=CapturingProcessor(),
    )
    await accept_all(consumer, store, sources("orders"))
    stored = await store.stream(category="orders", stream="s").publish(
        events=[NewEvent(name="happened", payload={"n": n}) for n in range(3)]
    )

    assert await consumer.saved_positions(sources("orders")) == {
        CategoryIdentifier(category="orders"): None
    }
    await consumer.consume_all()

    assert await consumer.saved_positions(sources("orders", "payments")) == {
        CategoryIdentifier(category="orders"): stored[-1].sequence_number,
        CategoryIdentifier(category="payments"): None,
    }
