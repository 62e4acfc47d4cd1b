"""A multi-source subscription consumer tells which sources it holds."""

from logicblocks.event.store import EventStore, InMemoryEventStorageAdapter
from logicblocks.event.types import CategoryIdentifier

from eventcomposition.consumers import make_subscription_consumer
from eventcomposition.runtime import ExposesSources
from eventcomposition.testing.capture import CapturingProcessor


async def test_sources_follow_what_the_broker_allocates_and_withdraws() -> None:
    store = EventStore(adapter=InMemoryEventStorageAdapter())
    requested = [CategoryIdentifier(category=name) for name in ("a", "b", "c")]
    consumer = make_subscription_consumer(
        event_store=store,
        subscriber_group="totals",
        subscription_requests=requested,
        event_processor=CapturingProcessor(),
    )
    assert isinstance(consumer, ExposesSources)
    assert list(consumer.sources) == []

    await consumer.accept(store.category(category="a"))
    await consumer.accept(store.category(category="c"))
    await consumer.withdraw(store.category(category="a"))

    assert consumer.sources == (CategoryIdentifier(category="c"),)
