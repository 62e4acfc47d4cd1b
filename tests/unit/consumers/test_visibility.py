"""The visibility horizon's bookkeeping, its coalescing, and how consumers use it."""

import asyncio
from collections.abc import Mapping, Sequence, Set
from datetime import timedelta

from logicblocks.event.store import EventStore, InMemoryEventStorageAdapter
from logicblocks.event.types import (
    CategoryIdentifier,
    EventSourceIdentifier,
    NewEvent,
    StoredEvent,
)

from eventcomposition.consumers import (
    BatchProcessor,
    InMemoryCheckpointStore,
    StoreEventReader,
    Transaction,
    TransactionalConsumer,
)
from eventcomposition.consumers.visibility import (
    Horizon,
    PostgresVisibilityHorizon,
    VisibilityHorizon,
)
from eventcomposition.runtime import ConsumerService, EventConsumerSettings
from eventcomposition.testing.waiting import wait_until


def horizon() -> PostgresVisibilityHorizon:
    return PostgresVisibilityHorizon(pool=None)  # type: ignore[arg-type]


class TestPostgresSamples:
    def test_with_no_writer_every_number_handed_out_is_final(self) -> None:
        assert horizon().observe(10, frozenset()) == Horizon(safe=10, allocated=10)

    def test_a_sample_is_final_once_its_writers_have_all_ended(self) -> None:
        samples = horizon()
        assert samples.observe(10, frozenset({"a", "b"})).safe == 0
        assert samples.observe(12, frozenset({"b", "c"})).safe == 0  # b still writes
        assert samples.observe(15, frozenset({"c", "d"})) == Horizon(
            safe=10, allocated=15
        )
        assert samples.observe(15, frozenset({"d"})).safe == 12  # c ended
        assert samples.observe(16, frozenset()).safe == 16

    def test_a_newer_sample_covers_the_older_ones(self) -> None:
        samples = horizon()
        samples.observe(10, frozenset({"slow"}))
        samples.observe(20, frozenset({"slow", "quick"}))
        samples.observe(30, frozenset({"slow", "other"}))
        # "slow" never ends, so none of these samples becomes final.
        assert samples.observe(40, frozenset({"slow"})) == Horizon(0, 40)

    def test_the_horizon_never_moves_back(self) -> None:
        samples = horizon()
        samples.observe(10, frozenset())
        assert samples.observe(8, frozenset({"x"})) == Horizon(safe=10, allocated=10)

    def test_a_server_restart_forgets_the_horizon(self) -> None:
        """A crash of an asynchronously committing server can hand numbers out
        again: what was final before says nothing about them."""
        samples = horizon()
        assert not samples.observe_server("started at 1")
        samples.observe(10, frozenset({"a"}))
        samples.observe(12, frozenset())
        assert not samples.observe_server("started at 1")
        assert samples.restarts == 0

        assert samples.observe_server("started at 2")
        assert samples.restarts == 1
        assert samples.latest is None
        assert samples.observe(9, frozenset({"b"})) == Horizon(safe=0, allocated=9)
        assert samples.observe(9, frozenset()) == Horizon(safe=9, allocated=9)


class CountingHorizon(VisibilityHorizon):
    def __init__(self) -> None:
        super().__init__()
        self.samples = 0
        self.gate = asyncio.Event()

    async def _sample(self) -> Horizon:
        self.samples += 1
        await self.gate.wait()
        return Horizon(safe=self.samples, allocated=self.samples)


async def test_concurrent_callers_share_a_sample_that_began_after_they_called() -> None:
    counting = CountingHorizon()
    first = asyncio.create_task(counting.current())
    await asyncio.sleep(0)  # the first sample is under way
    later = [asyncio.create_task(counting.current()) for _ in range(5)]
    await asyncio.sleep(0)
    counting.gate.set()

    assert (await first).safe == 1
    # The five came while the first sample ran: they share the second one.
    assert {(await task).safe for task in later} == {2}
    assert counting.samples == 2


class HeldBackReader(StoreEventReader):
    def __init__(self, event_store: EventStore) -> None:
        super().__init__(event_store)
        self.held = True
        self.refreshes = 0

    async def refresh(self) -> None:
        self.refreshes += 1
        await super().refresh()

    async def held_back(
        self, positions: Mapping[EventSourceIdentifier, int | None]
    ) -> Set[EventSourceIdentifier]:
        return frozenset(positions) if self.held else frozenset()


class Nothing(BatchProcessor):
    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        return None


async def test_a_held_back_consumer_polls_again_soon_then_less_while_stuck() -> None:
    store = EventStore(adapter=InMemoryEventStorageAdapter())
    reader = HeldBackReader(store)
    consumer = TransactionalConsumer(
        group="g",
        id="a",
        node_id="node",
        subscription_requests=[CategoryIdentifier(category="orders")],
        processor=Nothing(),
        checkpoint_store=InMemoryCheckpointStore(),
        event_reader=reader,
    )
    await consumer.accept(store.category(category="orders"))
    assert consumer.next_poll_within() is None

    delays = []
    for _ in range(12):
        await consumer.consume_all()
        delays.append(consumer.next_poll_within())
    assert reader.refreshes == 12  # one horizon per poll round
    assert delays[:3] == [timedelta(milliseconds=ms) for ms in (2, 4, 8)]
    assert delays[-1] == timedelta(milliseconds=500)

    # A round that applies events starts over: the horizon is moving.
    await store.stream(category="orders", stream="s").publish(
        events=[NewEvent(name="placed", payload={})]
    )
    await consumer.consume_all()
    assert consumer.next_poll_within() == timedelta(milliseconds=2)

    reader.held = False
    await consumer.consume_all()
    assert consumer.next_poll_within() is None


class SoonConsumer:
    def __init__(self) -> None:
        self.polls = 0

    async def consume_all(self) -> None:
        self.polls += 1

    def next_poll_within(self) -> timedelta | None:
        return timedelta(milliseconds=1) if self.polls < 5 else None


async def test_the_service_polls_again_as_soon_as_its_consumer_asks() -> None:
    consumer = SoonConsumer()
    service = ConsumerService(
        "soon",
        consumer,  # type: ignore[arg-type]
        EventConsumerSettings(poll_interval=timedelta(hours=1)),
    )
    task = asyncio.create_task(service.execute())
    try:
        await wait_until(lambda: consumer.polls >= 5, description="five polls")
        await asyncio.sleep(0.05)
        assert consumer.polls == 5  # then the hour's pause
    finally:
        service.request_drain()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class SelectiveReader(StoreEventReader):
    """Says ``orders`` is held back until told otherwise; records what was read."""

    def __init__(self, event_store: EventStore) -> None:
        super().__init__(event_store)
        self.waiting: set[EventSourceIdentifier] = {ORDERS}
        self.read_sources: list[EventSourceIdentifier] = []

    async def read(
        self, source: EventSourceIdentifier, *, after: int | None, limit: int
    ) -> Sequence[StoredEvent]:
        self.read_sources.append(source)
        return await super().read(source, after=after, limit=limit)

    async def held_back(
        self, positions: Mapping[EventSourceIdentifier, int | None]
    ) -> Set[EventSourceIdentifier]:
        return self.waiting & set(positions)


ORDERS = CategoryIdentifier(category="orders")
REFUNDS = CategoryIdentifier(category="refunds")


async def test_a_wake_for_other_categories_polls_the_held_back_sources_too() -> None:
    store = EventStore(adapter=InMemoryEventStorageAdapter())
    reader = SelectiveReader(store)
    consumer = TransactionalConsumer(
        group="g",
        id="a",
        node_id="node",
        subscription_requests=[ORDERS, REFUNDS],
        processor=Nothing(),
        checkpoint_store=InMemoryCheckpointStore(),
        event_reader=reader,
    )
    for source in (ORDERS, REFUNDS):
        await consumer.accept(store.category(category=source.category))
    await consumer.consume_all()  # claims both; orders is held back

    reader.read_sources.clear()
    await consumer.consume_categories(frozenset({"refunds"}))
    assert set(reader.read_sources) == {ORDERS, REFUNDS}
    assert consumer.next_poll_within() is not None

    reader.waiting = set()
    await consumer.consume_categories(frozenset({"refunds"}))
    reader.read_sources.clear()
    await consumer.consume_categories(frozenset({"refunds"}))
    assert reader.read_sources == [REFUNDS]
    assert consumer.next_poll_within() is None
