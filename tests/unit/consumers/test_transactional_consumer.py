"""Transactional consumers with the in-memory stores: batches, claims, poison events."""

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from logicblocks.event.processing import EventSubscriberHealth
from logicblocks.event.store import EventStore, InMemoryEventStorageAdapter
from logicblocks.event.types import (
    CategoryIdentifier,
    EventSourceIdentifier,
    NewEvent,
    StoredEvent,
)

from eventcomposition.consumers import (
    BatchProcessor,
    ClaimLostError,
    EventHandler,
    Holder,
    InMemoryCheckpointStore,
    PoisonOrder,
    PoisonPolicy,
    SourcesStoppedError,
    StoreEventReader,
    Transaction,
    TransactionalConsumer,
    TransactionUnsupportedError,
    make_transactional_consumer,
    retry_dead_letters,
)
from eventcomposition.metrics import NodeMetrics
from eventcomposition.retry import Backoff
from eventcomposition.testing.waiting import wait_until

GROUP = "totals"
LEASE = timedelta(seconds=10)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)
        self.monotonic = 1000.0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.monotonic += seconds


class Recorder(BatchProcessor):
    """Applies each batch on commit; fails on payloads listed in ``poison``."""

    def __init__(self, poison: Sequence[int] = ()) -> None:
        self.poison = set(poison)
        self.applied: list[StoredEvent] = []
        self.batches: list[list[int]] = []
        self.calls = 0
        self.transient_failures = 0
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.transient_failures:
            self.transient_failures -= 1
            raise psycopg.OperationalError("server closed the connection")
        for event in events:
            if number(event) in self.poison:
                raise ValueError(f"cannot apply order {number(event)}")
        batch = list(events)

        def apply() -> None:
            self.applied.extend(batch)
            self.batches.append([number(event) for event in batch])

        transaction.on_commit(apply)

    @property
    def numbers(self) -> list[int]:
        return [number(event) for event in self.applied]


def number(event: StoredEvent) -> int:
    payload = event.payload
    assert isinstance(payload, dict)
    value = payload["n"]
    assert isinstance(value, int)
    return value


async def publish(store: EventStore, category: str, count: int, start: int = 0) -> None:
    await store.stream(category=category, stream="s").publish(
        events=[
            NewEvent(name="placed", payload={"n": n})
            for n in range(start, start + count)
        ]
    )


@pytest.fixture
def event_store() -> EventStore:
    return EventStore(adapter=InMemoryEventStorageAdapter())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def checkpoints(clock: Clock) -> InMemoryCheckpointStore:
    return InMemoryCheckpointStore(clock=clock)


def consumer(
    event_store: EventStore,
    checkpoints: InMemoryCheckpointStore,
    processor: BatchProcessor | EventHandler,
    *,
    categories: Sequence[str] = ("orders",),
    subscriber_id: str = "a",
    batch_size: int = 500,
    on_poison: PoisonPolicy = PoisonPolicy.PARK,
    poison_attempts: int = 2,
    poison_order: PoisonOrder = PoisonOrder.STREAM,
    clock: Clock | None = None,
    metrics: NodeMetrics | None = None,
    concurrent_batches: int | None = 2,
    catch_up_batch_size: int | None = None,
) -> TransactionalConsumer:
    return TransactionalConsumer(
        group=GROUP,
        id=subscriber_id,
        node_id=f"node-{subscriber_id}",
        subscription_requests=[CategoryIdentifier(category=c) for c in categories],
        processor=processor,
        checkpoint_store=checkpoints,
        event_reader=StoreEventReader(event_store),
        batch_size=batch_size,
        catch_up_batch_size=catch_up_batch_size,
        claim_lease=LEASE,
        on_poison=on_poison,
        poison_attempts=poison_attempts,
        poison_order=poison_order,
        transient_backoff=Backoff(initial=timedelta(seconds=1)),
        clock=time.monotonic if clock is None else (lambda: clock.monotonic),
        metrics=metrics,
        concurrent_batches=concurrent_batches,
    )


async def accept(
    subscriber: TransactionalConsumer, store: EventStore, *categories: str
) -> None:
    for category in categories or ("orders",):
        await subscriber.accept(store.category(category=category))


class TestBatches:
    async def test_full_batches_then_the_remainder_in_order(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        await publish(event_store, "orders", 1200)
        recorder = Recorder()
        subscriber = consumer(event_store, checkpoints, recorder)
        await accept(subscriber, event_store)

        await subscriber.consume_all()

        assert [len(batch) for batch in recorder.batches] == [500, 500, 200]
        assert recorder.numbers == list(range(1200))
        positions = await checkpoints.positions(GROUP)
        assert positions == {"orders": recorder.applied[-1].sequence_number}

    async def test_a_source_behind_reads_catch_up_batches_until_it_has_caught_up(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        await publish(event_store, "orders", 1000)
        recorder = Recorder()
        subscriber = consumer(
            event_store, checkpoints, recorder, batch_size=100, catch_up_batch_size=400
        )
        await accept(subscriber, event_store)

        await subscriber.consume_all()
        await publish(event_store, "orders", 150, start=1000)
        await subscriber.consume_all()

        # A full batch says the source is behind: the next reads take up to 400;
        # a partial one that it has caught up: back to 100 (live batches stay small).
        sizes = [len(batch) for batch in recorder.batches]
        assert sizes == [100, 400, 400, 100, 100, 50]
        assert recorder.numbers == list(range(1150))

    async def test_a_batch_never_mixes_sources_and_an_idle_poll_applies_nothing(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        await publish(event_store, "orders-1", 3)
        await publish(event_store, "orders-2", 4, start=100)
        recorder = Recorder()
        subscriber = consumer(
            event_store, checkpoints, recorder, categories=("orders-1", "orders-2")
        )
        await accept(subscriber, event_store, "orders-1", "orders-2")

        await subscriber.consume_all()
        await subscriber.consume_all()

        # One batch per source; sources progress on their own, so in either order.
        assert sorted(recorder.batches) == [[0, 1, 2], [100, 101, 102, 103]]
        assert {
            event.category for event in recorder.applied if number(event) < 100
        } == {"orders-1"}
        assert set(subscriber.sources) == set(subscriber.claimed_sources)
        assert len(subscriber.sources) == 2

    async def test_backlogged_sources_take_turns_batch_by_batch(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        await publish(event_store, "orders-1", 5)
        await publish(event_store, "orders-2", 3, start=100)
        recorder = Recorder()
        subscriber = consumer(
            event_store,
            checkpoints,
            recorder,
            categories=("orders-1", "orders-2"),
            batch_size=2,
            concurrent_batches=1,  # one batch at a time: the turns show in order
        )
        await accept(subscriber, event_store, "orders-1", "orders-2")

        await subscriber.consume_all()

        assert recorder.batches == [[0, 1], [100, 101], [2, 3], [102], [4]]

    async def test_an_in_memory_transaction_has_no_connection(self) -> None:
        store = InMemoryCheckpointStore()
        async with store.transaction() as transaction:
            with pytest.raises(TransactionUnsupportedError, match="on_commit"):
                _ = transaction.connection

    async def test_rejects_bad_arguments_with_a_clear_message(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        common = {
            "event_store": event_store,
            "checkpoint_store": checkpoints,
            "subscriber_group": GROUP,
            "processor": Recorder(),
        }
        with pytest.raises(ValueError, match="requests no event sources"):
            make_transactional_consumer(subscription_requests=[], **common)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="on_poison must be 'park' or 'stop'"):
            make_transactional_consumer(
                subscription_requests=[CategoryIdentifier(category="orders")],
                on_poison="skip",
                **common,  # type: ignore[arg-type]
            )


class TestClaims:
    async def test_a_second_subscriber_waits_until_the_first_releases(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        await publish(event_store, "orders", 5)
        first, second = Recorder(), Recorder()
        a = consumer(event_store, checkpoints, first, subscriber_id="a")
        b = consumer(event_store, checkpoints, second, subscriber_id="b")
        await accept(a, event_store)
        await a.consume_all()
        await accept(b, event_store)

        await b.consume_all()
        assert b.claimed_sources == ()
        assert not await checkpoints.is_released(GROUP, "orders")

        await a.withdraw(event_store.category(category="orders"))
        assert await checkpoints.is_released(GROUP, "orders")
        await publish(event_store, "orders", 3, start=5)
        await b.consume_all()

        assert first.numbers == [0, 1, 2, 3, 4]
        assert second.numbers == [5, 6, 7]
        (record,) = await checkpoints.claims(GROUP)
        assert (record.holder, record.epoch, record.released) == (
            Holder("node-b", "b"),
            2,
            False,
        )

    async def test_a_stale_holder_rolls_back_and_stops_the_source(
        self,
        event_store: EventStore,
        checkpoints: InMemoryCheckpointStore,
        clock: Clock,
    ) -> None:
        await publish(event_store, "orders", 4)
        slow, fast = Recorder(), Recorder()
        slow.gate = asyncio.Event()
        a = consumer(event_store, checkpoints, slow, subscriber_id="a")
        b = consumer(event_store, checkpoints, fast, subscriber_id="b")
        await accept(a, event_store)
        await accept(b, event_store)

        stuck = asyncio.create_task(a.consume_all())
        await asyncio.wait_for(slow.entered.wait(), 5)
        clock.advance(LEASE.total_seconds() + 1)  # a's lease expires mid-batch
        await b.consume_all()
        slow.gate.set()
        await stuck

        assert fast.numbers == [0, 1, 2, 3]
        assert slow.numbers == []
        assert a.claimed_sources == ()
        assert a.sources == b.sources
        assert (await checkpoints.claims(GROUP))[0].epoch == 2

    async def test_a_fence_refuses_a_commit_with_an_old_epoch(
        self, checkpoints: InMemoryCheckpointStore
    ) -> None:
        holder = Holder("node", "a")
        old = await checkpoints.claim(GROUP, "orders", holder, LEASE)
        new = await checkpoints.claim(GROUP, "orders", holder, LEASE)
        assert old is not None
        assert new is not None
        assert new.epoch == old.epoch + 1

        with pytest.raises(ClaimLostError, match="epoch 1"):
            async with checkpoints.transaction() as transaction:
                await checkpoints.advance(transaction, old, 7, LEASE)
        assert await checkpoints.position(GROUP, "orders") is None

    async def test_withdrawing_during_a_batch_releases_once_it_has_committed(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        await publish(event_store, "orders", 3)
        recorder = Recorder()
        recorder.gate = asyncio.Event()
        a = consumer(event_store, checkpoints, recorder)
        await accept(a, event_store)

        running = asyncio.create_task(a.consume_all())
        await asyncio.wait_for(recorder.entered.wait(), 5)
        await a.withdraw(event_store.category(category="orders"))
        assert not await checkpoints.is_released(GROUP, "orders")
        assert a.sources == ()
        recorder.gate.set()
        await running

        assert recorder.numbers == [0, 1, 2]
        assert await checkpoints.is_released(GROUP, "orders")

    async def test_an_idle_claim_is_renewed_and_one_taken_over_is_let_go(
        self,
        event_store: EventStore,
        checkpoints: InMemoryCheckpointStore,
        clock: Clock,
    ) -> None:
        a = consumer(event_store, checkpoints, Recorder(), clock=clock)
        await accept(a, event_store)
        await a.consume_all()
        clock.advance(LEASE.total_seconds() / 2)
        await a.consume_all()  # renews: the lease now ends later
        clock.advance(LEASE.total_seconds() * 0.6)
        assert not await checkpoints.is_released(GROUP, "orders")

        clock.advance(LEASE.total_seconds())
        taken = await checkpoints.claim(GROUP, "orders", Holder("other", "b"), LEASE)
        assert taken is not None
        await a.consume_all()  # only tries to claim again
        clock.advance(LEASE.total_seconds() / 2)
        await a.consume_all()

        assert a.claimed_sources == ()
        assert a.sources != ()


class TestPoisonEvents:
    async def test_parks_the_failing_event_after_its_attempts_and_goes_on(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        # poison_order "none": the later events of its stream go on past it.
        await publish(event_store, "orders", 20)
        recorder = Recorder(poison=[7])
        subscriber = consumer(
            event_store,
            checkpoints,
            recorder,
            batch_size=20,
            poison_attempts=2,
            poison_order=PoisonOrder.NONE,
        )
        await accept(subscriber, event_store)

        await subscriber.consume_all()
        assert recorder.numbers == list(range(7))
        assert await checkpoints.dead_letters(GROUP) == []

        await subscriber.consume_all()

        assert recorder.numbers == [n for n in range(20) if n != 7]
        (letter,) = await checkpoints.dead_letters(GROUP)
        poison = next(
            event
            for event in await StoreEventReader(event_store).read(
                subscriber.sources[0], after=None, limit=20
            )
            if number(event) == 7
        )
        assert (letter.source, letter.sequence_number, letter.event_id) == (
            "orders",
            poison.sequence_number,
            poison.id,
        )
        assert letter.attempts == 2
        assert letter.error == "ValueError: cannot apply order 7"

        recorder.poison.clear()
        result = await retry_dead_letters(
            checkpoint_store=checkpoints,
            event_reader=StoreEventReader(event_store),
            group=GROUP,
            processor=recorder,
        )
        assert result.applied == [letter]
        assert recorder.numbers[-1] == 7
        assert await checkpoints.dead_letters(GROUP) == []

    async def test_halving_finds_the_poison_event_in_few_attempts(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        await publish(event_store, "orders", 512)
        recorder = Recorder(poison=[300])
        subscriber = consumer(
            event_store,
            checkpoints,
            recorder,
            batch_size=512,
            poison_attempts=1,
            poison_order=PoisonOrder.NONE,
        )
        await accept(subscriber, event_store)

        await subscriber.consume_all()

        # Each halving costs one failed and at most one committed attempt.
        assert recorder.calls <= 2 * 9 + 2
        assert recorder.numbers == [n for n in range(512) if n != 300]
        assert [letter.attempts for letter in await checkpoints.dead_letters()] == [1]

    async def test_stop_stops_only_that_source_and_reports_it(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        await publish(event_store, "orders-1", 5)
        await publish(event_store, "orders-2", 5, start=100)
        recorder = Recorder(poison=[2])
        subscriber = consumer(
            event_store,
            checkpoints,
            recorder,
            categories=("orders-1", "orders-2"),
            on_poison=PoisonPolicy.STOP,
            poison_attempts=1,
        )
        await accept(subscriber, event_store, "orders-1", "orders-2")

        with pytest.raises(SourcesStoppedError, match="orders-1: event") as raised:
            await subscriber.consume_all()
        await publish(event_store, "orders-2", 1, start=105)
        with pytest.raises(SourcesStoppedError):
            await subscriber.consume_all()

        assert list(raised.value.stopped) == ["orders-1"]
        # The two sources progress side by side: each in its own order.
        assert sorted(recorder.numbers) == [0, 1, 100, 101, 102, 103, 104, 105]
        assert list(subscriber.stopped_sources) == ["orders-1"]
        assert subscriber.health() is EventSubscriberHealth.HEALTHY
        assert await checkpoints.dead_letters(GROUP) == []

    async def test_transient_failures_back_off_and_are_never_parked(
        self,
        event_store: EventStore,
        checkpoints: InMemoryCheckpointStore,
        clock: Clock,
    ) -> None:
        await publish(event_store, "orders", 3)
        recorder = Recorder()
        recorder.transient_failures = 3
        subscriber = consumer(
            event_store, checkpoints, recorder, poison_attempts=1, clock=clock
        )
        await accept(subscriber, event_store)

        with pytest.raises(psycopg.OperationalError):
            await subscriber.consume_all()
        calls = recorder.calls
        await subscriber.consume_all()  # backing off: nothing tried
        assert recorder.calls == calls
        for _ in range(2):
            clock.advance(60)
            with pytest.raises(psycopg.OperationalError):
                await subscriber.consume_all()
        clock.advance(60)
        await subscriber.consume_all()

        assert recorder.numbers == [0, 1, 2]
        assert await checkpoints.dead_letters(GROUP) == []


class CountingReader(StoreEventReader):
    def __init__(self, event_store: EventStore) -> None:
        super().__init__(event_store)
        self.reads = 0

    async def read(
        self, source: EventSourceIdentifier, *, after: int | None, limit: int
    ) -> Sequence[StoredEvent]:
        self.reads += 1
        return await super().read(source, after=after, limit=limit)


class CountingStore(InMemoryCheckpointStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __getattribute__(self, name: str) -> Any:
        attribute = super().__getattribute__(name)
        if name in {"claim", "renew", "release", "position", "transaction"}:
            super().__setattr__("calls", super().__getattribute__("calls") + 1)
        return attribute


async def test_an_idle_source_costs_one_read_per_poll(event_store: EventStore) -> None:
    await publish(event_store, "orders", 3)
    reader, store = CountingReader(event_store), CountingStore()
    subscriber = TransactionalConsumer(
        group=GROUP,
        id="a",
        node_id="node",
        subscription_requests=[CategoryIdentifier(category="orders")],
        processor=Recorder(),
        checkpoint_store=store,
        event_reader=reader,
    )
    await accept(subscriber, event_store)
    await subscriber.consume_all()
    reads, calls = reader.reads, store.calls

    await subscriber.consume_all()

    assert (reader.reads - reads, store.calls - calls) == (1, 0)


class RecordingMetrics(NodeMetrics):
    """Keeps every call a consumer makes."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, EventSourceIdentifier, int]] = []
        self.seconds: list[float] = []
        self.failures: list[tuple[str, EventSourceIdentifier]] = []
        self.dead_letters: list[str] = []

    def batch_processed(
        self, group: str, source: EventSourceIdentifier, events: int, seconds: float
    ) -> None:
        self.batches.append((group, source, events))
        self.seconds.append(seconds)

    def consumer_failed(self, group: str, source: EventSourceIdentifier) -> None:
        self.failures.append((group, source))

    def dead_lettered(self, group: str, events: int = 1) -> None:
        self.dead_letters.extend([group] * events)


class TestMetrics:
    async def test_records_each_committed_batch_with_its_size_and_duration(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        await publish(event_store, "orders", 12)
        metrics = RecordingMetrics()
        subscriber = consumer(
            event_store, checkpoints, Recorder(), batch_size=5, metrics=metrics
        )
        await accept(subscriber, event_store)

        await subscriber.consume_all()

        orders = CategoryIdentifier(category="orders")
        assert metrics.batches == [
            (GROUP, orders, 5),
            (GROUP, orders, 5),
            (GROUP, orders, 2),
        ]
        assert all(seconds >= 0 for seconds in metrics.seconds)
        assert metrics.failures == []
        assert metrics.dead_letters == []

    async def test_records_each_failed_attempt_and_each_parked_event(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        await publish(event_store, "orders", 10)
        metrics = RecordingMetrics()
        subscriber = consumer(
            event_store,
            checkpoints,
            Recorder(poison=[4]),
            batch_size=10,
            poison_attempts=2,
            poison_order=PoisonOrder.NONE,
            metrics=metrics,
        )
        await accept(subscriber, event_store)

        await subscriber.consume_all()
        orders = CategoryIdentifier(category="orders")
        assert metrics.failures == [(GROUP, orders)]
        assert metrics.dead_letters == []

        await subscriber.consume_all()

        assert metrics.failures == [(GROUP, orders), (GROUP, orders)]
        assert metrics.dead_letters == [GROUP]
        assert sum(events for _, _, events in metrics.batches) == 9

    async def test_records_a_database_failure_as_a_failed_attempt(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        await publish(event_store, "orders", 3)
        recorder = Recorder()
        recorder.transient_failures = 1
        metrics = RecordingMetrics()
        subscriber = consumer(event_store, checkpoints, recorder, metrics=metrics)
        await accept(subscriber, event_store)

        with pytest.raises(psycopg.OperationalError):
            await subscriber.consume_all()

        assert metrics.failures == [(GROUP, CategoryIdentifier(category="orders"))]
        assert metrics.batches == []
        assert metrics.dead_letters == []


class Overlapping(BatchProcessor):
    """Counts how many batches are in flight at once, each waiting for all."""

    def __init__(self, sources: int) -> None:
        self.in_flight = 0
        self.most_in_flight = 0
        self.all_in = asyncio.Event()
        self.sources = sources
        self.applied: dict[str, list[int]] = {}

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if self.in_flight == self.sources:
            self.all_in.set()
        await asyncio.wait_for(self.all_in.wait(), 5)
        self.in_flight -= 1
        batch = [number(event) for event in events]
        category = events[0].category
        transaction.on_commit(
            lambda: self.applied.setdefault(category, []).extend(batch)
        )


async def test_concurrent_sources_take_their_batches_at_once(
    event_store: EventStore, checkpoints: InMemoryCheckpointStore
) -> None:
    for index, category in enumerate(("left", "right", "middle")):
        await publish(event_store, category, 25, start=index * 100)
    processor = Overlapping(sources=3)
    subscriber = TransactionalConsumer(
        group=GROUP,
        id="a",
        node_id="node-a",
        subscription_requests=[CategoryIdentifier(category="left")],
        processor=processor,
        checkpoint_store=checkpoints,
        event_reader=StoreEventReader(event_store),
        batch_size=10,
        concurrent_sources=True,
    )
    await accept(subscriber, event_store, "left", "right", "middle")

    await subscriber.consume_all()

    assert processor.most_in_flight == 3
    assert processor.applied == {
        "left": list(range(25)),
        "right": list(range(100, 125)),
        "middle": list(range(200, 225)),
    }


class Handler(EventHandler):
    """Per-event: applies each event on commit; fails on payloads in ``poison``."""

    def __init__(self, poison: Sequence[int] = ()) -> None:
        self.poison = set(poison)
        self.applied: list[StoredEvent] = []
        self.calls = 0
        self.transient_failures = 0

    async def process_event(self, event: StoredEvent, transaction: Transaction) -> None:
        self.calls += 1
        if self.transient_failures:
            self.transient_failures -= 1
            raise psycopg.OperationalError("server closed the connection")
        if number(event) in self.poison:
            raise ValueError(f"cannot apply order {number(event)}")
        transaction.on_commit(lambda: self.applied.append(event))

    @property
    def numbers(self) -> list[int]:
        return [number(event) for event in self.applied]

    def stream_numbers(self, stream: str) -> list[int]:
        return [number(event) for event in self.applied if event.stream == stream]


async def publish_to(store: EventStore, stream: str, *numbers: int) -> None:
    await store.stream(category="orders", stream=stream).publish(
        events=[NewEvent(name="placed", payload={"n": n}) for n in numbers]
    )


class TestEventHandlers:
    async def test_runs_the_handler_over_each_batch_in_its_transaction(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        await publish(event_store, "orders", 1200)
        handler = Handler()
        metrics = RecordingMetrics()
        subscriber = make_transactional_consumer(
            event_store=event_store,
            checkpoint_store=checkpoints,
            subscriber_group=GROUP,
            subscription_requests=[CategoryIdentifier(category="orders")],
            processor=handler,
            metrics=metrics,
        )
        await accept(subscriber, event_store)

        await subscriber.consume_all()
        await subscriber.consume_all()

        assert handler.numbers == list(range(1200))
        assert handler.calls == 1200
        # The first batch came back full: the rest in one catch-up batch.
        assert [events for _, _, events in metrics.batches] == [500, 700]
        positions = await checkpoints.positions(GROUP)
        assert positions == {"orders": handler.applied[-1].sequence_number}

    async def test_commits_the_events_before_a_failing_one_without_halving(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        await publish(event_store, "orders", 512)
        handler = Handler(poison=[300])
        subscriber = consumer(
            event_store,
            checkpoints,
            handler,
            batch_size=512,
            poison_attempts=1,
            poison_order=PoisonOrder.NONE,
        )
        await accept(subscriber, event_store)

        await subscriber.consume_all()

        # 0..300 (fails), 0..299 committed, then 301..511: no halving.
        assert handler.calls == 301 + 300 + 211
        assert handler.numbers == [n for n in range(512) if n != 300]
        (letter,) = await checkpoints.dead_letters(GROUP)
        assert (letter.attempts, letter.error) == (
            1,
            "ValueError: cannot apply order 300",
        )
        assert letter.stream == "orders/s"
        assert not letter.waiting

    async def test_a_failing_event_is_tried_alone_then_parked(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        await publish(event_store, "orders", 10)
        handler = Handler(poison=[4])
        subscriber = consumer(
            event_store,
            checkpoints,
            handler,
            poison_attempts=2,
            poison_order=PoisonOrder.NONE,
        )
        await accept(subscriber, event_store)

        await subscriber.consume_all()
        assert handler.numbers == [0, 1, 2, 3]
        assert await checkpoints.dead_letters(GROUP) == []
        calls = handler.calls

        await subscriber.consume_all()

        assert handler.calls - calls == 1 + 5  # 4 alone, then 5..9
        assert handler.numbers == [0, 1, 2, 3, 5, 6, 7, 8, 9]
        assert [letter.attempts for letter in await checkpoints.dead_letters()] == [2]

        handler.poison.clear()
        result = await retry_dead_letters(
            checkpoint_store=checkpoints,
            event_reader=StoreEventReader(event_store),
            group=GROUP,
            processor=handler,
        )
        assert [letter.sequence_number for letter in result.applied] == [4]
        assert handler.numbers[-1] == 4

    async def test_database_failures_in_the_handler_are_retried_never_parked(
        self,
        event_store: EventStore,
        checkpoints: InMemoryCheckpointStore,
        clock: Clock,
    ) -> None:
        await publish(event_store, "orders", 3)
        handler = Handler()
        handler.transient_failures = 1
        subscriber = consumer(
            event_store, checkpoints, handler, poison_attempts=1, clock=clock
        )
        await accept(subscriber, event_store)

        with pytest.raises(psycopg.OperationalError):
            await subscriber.consume_all()
        clock.advance(60)
        await subscriber.consume_all()

        assert handler.numbers == [0, 1, 2]
        assert await checkpoints.dead_letters(GROUP) == []

    async def test_refuses_a_processor_of_another_kind(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        with pytest.raises(TypeError, match="BatchProcessor or an EventHandler"):
            make_transactional_consumer(
                event_store=event_store,
                checkpoint_store=checkpoints,
                subscriber_group=GROUP,
                subscription_requests=[CategoryIdentifier(category="orders")],
                processor=object(),  # type: ignore[arg-type]
            )
        with pytest.raises(ValueError, match="poison_order must be 'stream' or"):
            make_transactional_consumer(
                event_store=event_store,
                checkpoint_store=checkpoints,
                subscriber_group=GROUP,
                subscription_requests=[CategoryIdentifier(category="orders")],
                processor=Handler(),
                poison_order="sometimes",
            )


class TestStreamOrder:
    """A parked event's later events of its stream wait behind it; the other
    streams of the source go on; a retry applies the stream in order."""

    async def test_later_events_of_the_stream_wait_and_a_retry_applies_them_in_order(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        for stream, n in [("a", 0), ("b", 100), ("a", 1), ("b", 101), ("a", 2)]:
            await publish_to(event_store, stream, n)
        handler = Handler(poison=[1])
        subscriber = consumer(event_store, checkpoints, handler, poison_attempts=1)
        await accept(subscriber, event_store)

        await subscriber.consume_all()
        await publish_to(event_store, "a", 3)
        await publish_to(event_store, "b", 102)
        await subscriber.consume_all()

        assert handler.stream_numbers("b") == [100, 101, 102]
        assert handler.stream_numbers("a") == [0]
        letters = await checkpoints.dead_letters(GROUP)
        assert [(letter.stream, letter.waiting) for letter in letters] == [
            ("orders/a", False),
            ("orders/a", True),
            ("orders/a", True),
        ]
        sequence_numbers = [letter.sequence_number for letter in letters]
        assert sequence_numbers == sorted(sequence_numbers)

        handler.poison.clear()
        result = await retry_dead_letters(
            checkpoint_store=checkpoints,
            event_reader=StoreEventReader(event_store),
            group=GROUP,
            processor=handler,
        )
        assert result.applied == letters
        assert result.failed == []
        assert handler.stream_numbers("a") == [0, 1, 2, 3]
        assert await checkpoints.dead_letters(GROUP) == []

        # The stream is free again: its next events are applied.
        await publish_to(event_store, "a", 4)
        await subscriber.consume_all()
        assert handler.stream_numbers("a") == [0, 1, 2, 3, 4]
        assert await checkpoints.dead_letters(GROUP) == []

    async def test_a_failing_retry_keeps_the_stream_parked_behind_it(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        await publish_to(event_store, "a", 0, 1, 2)
        handler = Handler(poison=[0])
        subscriber = consumer(event_store, checkpoints, handler, poison_attempts=1)
        await accept(subscriber, event_store)
        await subscriber.consume_all()

        result = await retry_dead_letters(
            checkpoint_store=checkpoints,
            event_reader=StoreEventReader(event_store),
            group=GROUP,
            processor=handler,
        )

        assert result.applied == []
        assert [why for _, why in result.failed] == [
            "ValueError: cannot apply order 0",
            "waiting behind sequence number 0 of its stream, still parked",
            "waiting behind sequence number 0 of its stream, still parked",
        ]
        assert len(await checkpoints.dead_letters(GROUP)) == 3
        assert handler.numbers == []

    async def test_a_new_holder_keeps_the_parked_stream_waiting(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        await publish_to(event_store, "a", 0, 1)
        first = Handler(poison=[0])
        a = consumer(event_store, checkpoints, first, poison_attempts=1)
        await accept(a, event_store)
        await a.consume_all()
        await a.release_claims()

        await publish_to(event_store, "a", 2)
        await publish_to(event_store, "b", 100)
        second = Handler()
        b = consumer(event_store, checkpoints, second, subscriber_id="b")
        await accept(b, event_store)
        await b.consume_all()

        assert second.numbers == [100]
        assert [letter.waiting for letter in await checkpoints.dead_letters()] == [
            False,
            True,
            True,
        ]

    async def test_a_retry_while_the_consumer_runs_lets_the_stream_go_on(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        await publish_to(event_store, "a", 0)
        handler = Handler(poison=[0])
        subscriber = consumer(event_store, checkpoints, handler, poison_attempts=1)
        await accept(subscriber, event_store)
        await subscriber.consume_all()
        handler.poison.clear()
        await retry_dead_letters(
            checkpoint_store=checkpoints,
            event_reader=StoreEventReader(event_store),
            group=GROUP,
            processor=handler,
        )

        # The consumer still counts "a" as parked; its store says otherwise.
        await publish_to(event_store, "a", 1, 2)
        await subscriber.consume_all()

        assert handler.numbers == [0, 1, 2]
        assert await checkpoints.dead_letters(GROUP) == []

    async def test_a_batch_processor_keeps_stream_order_too(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        await publish_to(event_store, "a", 0, 1)
        await publish_to(event_store, "b", 100)
        recorder = Recorder(poison=[0])
        metrics = RecordingMetrics()
        subscriber = consumer(
            event_store, checkpoints, recorder, poison_attempts=1, metrics=metrics
        )
        await accept(subscriber, event_store)

        await subscriber.consume_all()

        assert recorder.numbers == [100]
        assert metrics.dead_letters == [GROUP, GROUP]
        assert [letter.waiting for letter in await checkpoints.dead_letters()] == [
            False,
            True,
        ]

    async def test_retrying_only_a_later_letter_keeps_it_behind_the_first(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        await publish_to(event_store, "a", 0, 1)
        handler = Handler(poison=[0])
        subscriber = consumer(event_store, checkpoints, handler, poison_attempts=1)
        await accept(subscriber, event_store)
        await subscriber.consume_all()
        handler.poison.clear()
        first, later = await checkpoints.dead_letters(GROUP)

        blocked = await retry_dead_letters(
            checkpoint_store=checkpoints,
            event_reader=StoreEventReader(event_store),
            group=GROUP,
            processor=handler,
            only=[later],
        )
        assert blocked.applied == []
        assert blocked.failed == [
            (later, "waiting behind sequence number 0 of its stream, still parked")
        ]

        head = await retry_dead_letters(
            checkpoint_store=checkpoints,
            event_reader=StoreEventReader(event_store),
            group=GROUP,
            processor=handler,
            only=[first],
        )
        assert head.applied == [first]
        assert handler.numbers == [0]
        assert await checkpoints.dead_letters(GROUP) == [later]


class FoldingHandler(EventHandler):
    """Folds each batch's numbers into one list, written once per batch."""

    def __init__(self, fail_write: bool = False) -> None:
        self.writes: list[list[int]] = []
        self.fail_write = fail_write

    async def process_event(self, event: StoredEvent, transaction: Transaction) -> None:
        numbers = transaction.batch_state(self, list[int], self.write)
        numbers.append(number(event))

    async def write(self, numbers: list[int], transaction: Transaction) -> None:
        if self.fail_write and 3 in numbers:
            raise ValueError("cannot write a batch with 3")
        transaction.on_commit(lambda: self.writes.append(numbers))


class TestBatchState:
    async def test_a_handler_folds_each_batch_and_writes_it_once(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        await publish(event_store, "orders", 12)
        handler = FoldingHandler()
        subscriber = consumer(event_store, checkpoints, handler, batch_size=5)
        await accept(subscriber, event_store)

        await subscriber.consume_all()

        assert handler.writes == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]

    async def test_a_failing_write_is_found_by_halving_and_parked(
        self, event_store: EventStore, checkpoints: InMemoryCheckpointStore
    ) -> None:
        await publish(event_store, "orders", 6)
        handler = FoldingHandler(fail_write=True)
        subscriber = consumer(
            event_store,
            checkpoints,
            handler,
            poison_attempts=1,
            poison_order=PoisonOrder.NONE,
        )
        await accept(subscriber, event_store)

        await subscriber.consume_all()

        assert sorted(n for write in handler.writes for n in write) == [0, 1, 2, 4, 5]
        (letter,) = await checkpoints.dead_letters(GROUP)
        assert letter.error == "ValueError: cannot write a batch with 3"


class Hanging(BatchProcessor):
    """Blocks on the categories in ``hung`` until ``freed``; applies the rest."""

    def __init__(self, hung: Sequence[str]) -> None:
        self.hung = set(hung)
        self.freed = asyncio.Event()
        self.entered: set[str] = set()
        self.applied: list[int] = []

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        category = events[0].category
        if category in self.hung:
            self.entered.add(category)
            await self.freed.wait()
        batch = [number(event) for event in events]
        transaction.on_commit(lambda: self.applied.extend(batch))


async def test_hung_sources_do_not_hold_the_others_batches_back(
    event_store: EventStore, checkpoints: InMemoryCheckpointStore
) -> None:
    """More hung sources than the consumer's concurrent batches: a batch past
    ``slow_batch`` gives its place up, so another source still goes on, and a
    poll that may stop waiting does not wait for a hung run it did not start."""
    processor = Hanging(hung=("hung-1", "hung-2"))
    subscriber = TransactionalConsumer(
        group=GROUP,
        id="a",
        node_id="node-a",
        subscription_requests=[CategoryIdentifier(category="free")],
        processor=processor,
        checkpoint_store=checkpoints,
        event_reader=StoreEventReader(event_store),
        concurrent_batches=1,
        slow_batch=timedelta(milliseconds=50),
        batch_timeout=timedelta(seconds=30),
    )
    await accept(subscriber, event_store, "hung-1", "hung-2", "free")
    await publish(event_store, "hung-1", 1)
    await publish(event_store, "hung-2", 1, start=100)
    first = asyncio.Event()
    polling = asyncio.create_task(subscriber.poll(None, first))
    await wait_until(lambda: processor.entered == {"hung-1", "hung-2"}, timeout=2)
    first.set()  # as the service does when the next poll is due
    await asyncio.wait_for(polling, 1)

    await publish(event_store, "free", 2, start=200)
    await asyncio.wait_for(subscriber.poll(frozenset({"free"}), asyncio.Event()), 2)

    await wait_until(lambda: processor.applied == [200, 201], timeout=2)
    processor.freed.set()
    await subscriber.consume_all()  # without stop_waiting: waits for every run
    assert sorted(processor.applied) == [0, 100, 200, 201]
