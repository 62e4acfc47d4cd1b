"""Gap-safe reading in memory: logicblocks' in-memory adapter, under the ``STREAM``
guarantee, lets a short write commit while a longer one that took lower sequence
numbers is still going (it awaits between events); no consumer may skip those."""

import asyncio
from collections.abc import Sequence

from logicblocks.event.processing import EventProcessor
from logicblocks.event.store import (
    EventStore,
    EventStoreEventSourceFactory,
    InMemoryEventStorageAdapter,
)
from logicblocks.event.store.adapters.base import EventSerialisationGuarantee
from logicblocks.event.types import (
    CategoryIdentifier,
    NewEvent,
    StoredEvent,
    StreamIdentifier,
)

from eventcomposition.consumers import (
    BatchProcessor,
    InMemoryCheckpointStore,
    Transaction,
    make_subscription_consumer,
    make_transactional_consumer,
)
from eventcomposition.consumers.visibility import gap_safe

ORDERS = CategoryIdentifier(category="orders")
LONG_WRITE = 200


class Recording(BatchProcessor):
    def __init__(self) -> None:
        self.applied: list[int] = []

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        numbers = [event.sequence_number for event in events]
        transaction.on_commit(lambda: self.applied.extend(numbers))


class RecordingPerEvent(EventProcessor[StoredEvent]):
    def __init__(self) -> None:
        self.applied: list[int] = []

    async def process_event(self, event: StoredEvent) -> None:
        self.applied.append(event.sequence_number)


def stream_guaranteed() -> InMemoryEventStorageAdapter:
    return InMemoryEventStorageAdapter(
        # logicblocks types this parameter more narrowly than the values it takes.
        serialisation_guarantee=EventSerialisationGuarantee.STREAM  # type: ignore[arg-type]
    )


async def start_a_long_write(
    adapter: InMemoryEventStorageAdapter,
) -> "asyncio.Task[object]":
    """A write of many events to one stream, left in flight holding the lowest
    numbers, while a short write to another stream commits: the gap is certain.

    Both go to the adapter directly: the store's publish logs through a thread,
    which would make the interleaving depend on timing."""
    long_write = asyncio.create_task(
        adapter.save(
            target=StreamIdentifier(category="orders", stream="long"),
            events=[
                NewEvent(name="placed", payload={"n": n}) for n in range(LONG_WRITE)
            ],
        )
    )
    for _ in range(5):
        await asyncio.sleep(0)  # the long write takes its first numbers
    (short,) = await adapter.save(
        target=StreamIdentifier(category="orders", stream="short"),
        events=[NewEvent(name="placed", payload={"n": 0})],
    )
    assert short.sequence_number > 0
    assert not long_write.done()
    return long_write


async def all_sequence_numbers(store: EventStore) -> list[int]:
    return sorted(
        [event.sequence_number async for event in store.category(category="orders")]
    )


async def test_a_transactional_consumer_skips_no_late_committed_event() -> None:
    adapter = stream_guaranteed()
    store = EventStore(adapter=adapter)
    processor = Recording()
    consumer = make_transactional_consumer(
        event_store=store,
        checkpoint_store=InMemoryCheckpointStore(),
        subscriber_group="gap-safe",
        subscription_requests=[ORDERS],
        processor=processor,
        batch_size=50,
    )
    await consumer.accept(store.category(category="orders"))

    long_write = await start_a_long_write(adapter)
    await consumer.consume_all()
    await long_write
    await consumer.consume_all()

    assert processor.applied == await all_sequence_numbers(store)
    assert len(processor.applied) == LONG_WRITE + 1


async def test_a_per_event_subscription_consumer_skips_no_late_committed_event() -> (
    None
):
    adapter = stream_guaranteed()
    store = EventStore(adapter=adapter)
    sources = EventStoreEventSourceFactory(adapter=gap_safe(adapter))
    processor = RecordingPerEvent()
    consumer = make_subscription_consumer(
        event_store=store,
        subscriber_group="gap-safe",
        subscription_requests=[ORDERS],
        event_processor=processor,
    )
    await consumer.accept(sources.construct(ORDERS))

    long_write = await start_a_long_write(adapter)
    await consumer.consume_all()
    await long_write
    await consumer.consume_all()

    assert processor.applied == await all_sequence_numbers(store)
    assert len(processor.applied) == LONG_WRITE + 1
