"""Reading ahead: a transactional consumer reads a source's next batch while it
applies the current one, and uses it only when it starts at the checkpoint."""

import asyncio
import time
from collections.abc import Sequence
from datetime import timedelta

import psycopg
import pytest
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
    PoisonOrder,
    StoreEventReader,
    Transaction,
    TransactionalConsumer,
)
from eventcomposition.retry import Backoff

GROUP = "totals"
ORDERS = CategoryIdentifier(category="orders")


def number(event: StoredEvent) -> int:
    payload = event.payload
    assert isinstance(payload, dict)
    value = payload["n"]
    assert isinstance(value, int)
    return value


class Reader(StoreEventReader):
    """Records each read's ``after`` when it starts; can hold reads ahead (those
    after a checkpoint) at a gate, or fail the next one."""

    def __init__(self, event_store: EventStore) -> None:
        super().__init__(event_store)
        self.started: list[int | None] = []
        self.gate: asyncio.Event | None = None
        self.cancelled = 0
        self.failures = 0

    async def read(
        self, source: EventSourceIdentifier, *, after: int | None, limit: int
    ) -> Sequence[StoredEvent]:
        self.started.append(after)
        if after is not None and self.failures:
            self.failures -= 1
            raise psycopg.OperationalError("server closed the connection")
        if after is not None and self.gate is not None:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return await super().read(source, after=after, limit=limit)


class Recorder(BatchProcessor):
    """Applies batches on commit; notes which reads had started by each batch;
    fails on the numbers in ``poison``; may wait at ``gate``."""

    def __init__(self, reader: Reader, poison: Sequence[int] = ()) -> None:
        self.reader = reader
        self.poison = set(poison)
        self.applied: list[int] = []
        self.reads_begun: list[list[int | None]] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        await asyncio.sleep(0)  # what the database's round trips would let run
        self.reads_begun.append(list(self.reader.started))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        numbers = [number(event) for event in events]
        if self.poison & set(numbers):
            raise ValueError("cannot apply")
        transaction.on_commit(lambda: self.applied.extend(numbers))


async def published(count: int) -> tuple[EventStore, list[int]]:
    store = EventStore(adapter=InMemoryEventStorageAdapter())
    stored = await store.stream(category="orders", stream="s").publish(
        events=[NewEvent(name="placed", payload={"n": n}) for n in range(count)]
    )
    return store, [event.sequence_number for event in stored]


async def subscribed(
    store: EventStore,
    reader: Reader,
    processor: Recorder,
    *,
    read_ahead: bool = True,
    concurrent: bool = False,
    batch_timeout: timedelta | None = None,
    clock: list[float] | None = None,
) -> TransactionalConsumer:
    consumer = TransactionalConsumer(
        group=GROUP,
        id="a",
        node_id="node",
        subscription_requests=[ORDERS],
        processor=processor,
        checkpoint_store=InMemoryCheckpointStore(),
        event_reader=reader,
        batch_size=4,
        poison_attempts=2,
        poison_order=PoisonOrder.NONE,
        read_ahead=read_ahead,
        concurrent_sources=concurrent,
        batch_timeout=batch_timeout,
        transient_backoff=Backoff(initial=timedelta(seconds=1)),
        clock=time.monotonic if clock is None else (lambda: clock[0]),
    )
    await consumer.accept(store.category(category="orders"))
    return consumer


async def test_the_next_batch_is_read_while_one_is_applied() -> None:
    store, numbers = await published(10)
    reader = Reader(store)
    recorder = Recorder(reader)
    consumer = await subscribed(store, reader, recorder)

    await consumer.consume_all()

    assert recorder.applied == list(range(10))
    # Each full batch's successor had been asked for while it was applied, and
    # that read was used: no source was read twice from one checkpoint.
    assert recorder.reads_begun[0] == [None, numbers[3]]
    assert recorder.reads_begun[1] == [None, numbers[3], numbers[7]]
    assert reader.started == [None, numbers[3], numbers[7]]


async def test_without_read_ahead_a_batch_is_read_when_its_turn_comes() -> None:
    for read_ahead, concurrent in ((False, False), (True, True)):
        store, numbers = await published(10)
        reader = Reader(store)
        recorder = Recorder(reader)
        consumer = await subscribed(
            store, reader, recorder, read_ahead=read_ahead, concurrent=concurrent
        )

        await consumer.consume_all()

        assert consumer.read_ahead is False
        assert recorder.applied == list(range(10))
        assert recorder.reads_begun[0] == [None]
        assert reader.started == [None, numbers[3], numbers[7]]


async def test_a_read_ahead_past_an_event_that_failed_is_not_used() -> None:
    store, numbers = await published(10)
    reader = Reader(store)
    recorder = Recorder(reader, poison=[2])
    consumer = await subscribed(store, reader, recorder)

    await consumer.consume_all()  # 0 and 1 commit; 2 fails, the source waits
    assert recorder.applied == [0, 1]
    await consumer.consume_all()  # 2 fails again and is parked; the rest goes on

    # Events 3 to 9 are read again from the checkpoint after 2, not taken from
    # the read ahead of the first batch (which began after 3).
    assert recorder.applied == [0, 1, 3, 4, 5, 6, 7, 8, 9]
    assert reader.started[:3] == [None, numbers[3], numbers[1]]


async def test_a_failed_read_ahead_is_a_database_failure_and_skips_nothing() -> None:
    store, _ = await published(10)
    reader = Reader(store)
    reader.failures = 1
    recorder = Recorder(reader)
    clock = [1000.0]
    consumer = await subscribed(store, reader, recorder, clock=clock)

    with pytest.raises(psycopg.OperationalError):
        await consumer.consume_all()
    assert recorder.applied == [0, 1, 2, 3]
    clock[0] += 60  # past the backoff
    await consumer.consume_all()

    assert recorder.applied == list(range(10))


async def test_a_read_ahead_that_hangs_is_abandoned_with_its_turn() -> None:
    store, _ = await published(10)
    reader = Reader(store)
    reader.gate = asyncio.Event()
    recorder = Recorder(reader)
    clock = [1000.0]
    consumer = await subscribed(
        store, reader, recorder, batch_timeout=timedelta(seconds=0.2), clock=clock
    )

    with pytest.raises(TimeoutError):
        await consumer.consume_all()  # the second turn waits for the read ahead
    assert (recorder.applied, reader.cancelled) == ([0, 1, 2, 3], 1)
    reader.gate.set()
    clock[0] += 60
    await consumer.consume_all()

    assert recorder.applied == list(range(10))


async def test_withdrawing_a_source_cancels_its_read_ahead() -> None:
    store, _ = await published(10)
    reader = Reader(store)
    reader.gate = asyncio.Event()
    recorder = Recorder(reader)
    recorder.gate = asyncio.Event()
    consumer = await subscribed(store, reader, recorder)

    running = asyncio.create_task(consumer.consume_all())
    await asyncio.wait_for(recorder.entered.wait(), 5)
    await consumer.withdraw(store.category(category="orders"))
    recorder.gate.set()
    await asyncio.wait_for(running, 5)
    await asyncio.sleep(0)  # the cancelled read ahead runs to its end

    assert (recorder.applied, reader.cancelled) == ([0, 1, 2, 3], 1)
    assert consumer.sources == ()
