"""Transactional consumers on PostgreSQL: exactly once in effect, poison events,
a restarted server, and the runtime running them."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from logicblocks.event.processing import (
    EventBrokerStorageType,
    EventBrokerType,
    ProcessStatus,
    ServiceManager,
)
from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.types import CategoryIdentifier, NewEvent, StoredEvent
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition import (
    DistributedEventBrokerSettings,
    EventConsumerSettings,
    EventRuntime,
    make_event_broker,
)
from eventcomposition.consumers import (
    BatchProcessor,
    EventHandler,
    PoisonOrder,
    PoisonPolicy,
    PostgresCheckpointStore,
    PostgresEventReader,
    Transaction,
    TransactionalConsumer,
    make_transactional_consumer,
    retry_dead_letters,
)
from eventcomposition.schema import migrate
from eventcomposition.testing.postgres import ConnectionInfo, ThrowawayPostgres
from eventcomposition.testing.waiting import wait_until

type Pool = AsyncConnectionPool[AsyncConnection[Any]]

GROUP = "applied"
APPLIED_TABLE = (
    "CREATE TABLE IF NOT EXISTS applied ("
    "row_id bigserial, event_id text NOT NULL, category text NOT NULL, "
    "sequence_number bigint NOT NULL, batch_size integer NOT NULL)"
)


class InsertingProcessor(BatchProcessor):
    """Inserts one row per event, with no idempotency of its own; the rows are
    written before the poison check, so a failing batch must roll them back."""

    def __init__(self, poison: Sequence[int] = ()) -> None:
        self.poison = set(poison)
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        async with transaction.connection.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO applied (event_id, category, sequence_number, batch_size) "
                "VALUES (%s, %s, %s, %s)",
                [
                    (event.id, event.category, event.sequence_number, len(events))
                    for event in events
                ],
            )
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        for event in events:
            if number(event) in self.poison:
                raise ValueError(f"cannot apply order {number(event)}")


class InsertingHandler(EventHandler):
    """The per-event style of ``InsertingProcessor``: one row per event, written
    before the poison check."""

    def __init__(self, poison: Sequence[int] = ()) -> None:
        self.poison = set(poison)
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def process_event(self, event: StoredEvent, transaction: Transaction) -> None:
        await transaction.connection.execute(
            "INSERT INTO applied (event_id, category, sequence_number, batch_size) "
            "VALUES (%s, %s, %s, 1)",
            (event.id, event.category, event.sequence_number),
        )
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if number(event) in self.poison:
            raise ValueError(f"cannot apply order {number(event)}")


type Inserting = InsertingProcessor | InsertingHandler

STYLES: dict[str, type[Inserting]] = {
    "batches": InsertingProcessor,
    "events": InsertingHandler,
}


@pytest.fixture(params=sorted(STYLES))
def inserting(request: pytest.FixtureRequest) -> type[Inserting]:
    """Each exactly-once check runs with a batch processor and an event handler."""
    return STYLES[request.param]


def number(event: StoredEvent) -> int:
    payload = event.payload
    assert isinstance(payload, dict)
    value = payload["n"]
    assert isinstance(value, int)
    return value


async def publish(
    pool: Pool, category: str, count: int, start: int = 0, *, stream: str = "s"
) -> None:
    store = EventStore(adapter=PostgresEventStorageAdapter(connection_source=pool))
    for first in range(start, start + count, 500):
        await store.stream(category=category, stream=stream).publish(
            events=[
                NewEvent(name="placed", payload={"n": n})
                for n in range(first, min(first + 500, start + count))
            ]
        )


async def rows(pool: Pool, query: str) -> list[tuple[Any, ...]]:
    async with pool.connection() as connection:
        cursor = await connection.execute(query)
        return await cursor.fetchall()


async def applied_counts(pool: Pool) -> tuple[int, int]:
    """(rows, distinct events) in ``applied``."""
    ((total, distinct),) = await rows(
        pool, "SELECT count(*), count(DISTINCT event_id) FROM applied"
    )
    return int(total), int(distinct)


def transactional(
    pool: Pool,
    processor: BatchProcessor | EventHandler,
    *,
    subscriber_id: str,
    categories: Sequence[str] = ("orders",),
    batch_size: int = 500,
    lease: timedelta = timedelta(seconds=10),
    on_poison: PoisonPolicy = PoisonPolicy.PARK,
    poison_attempts: int = 3,
    poison_order: PoisonOrder = PoisonOrder.STREAM,
) -> TransactionalConsumer:
    return make_transactional_consumer(
        event_store=EventStore(
            adapter=PostgresEventStorageAdapter(connection_source=pool)
        ),
        checkpoint_store=PostgresCheckpointStore(pool),
        subscriber_group=GROUP,
        subscription_requests=[CategoryIdentifier(category=c) for c in categories],
        processor=processor,
        batch_size=batch_size,
        subscriber_id=subscriber_id,
        node_id=f"node-{subscriber_id}",
        claim_lease=lease,
        on_poison=on_poison,
        poison_attempts=poison_attempts,
        poison_order=poison_order,
    )


async def accept(consumer: TransactionalConsumer, pool: Pool, *categories: str) -> None:
    store = EventStore(adapter=PostgresEventStorageAdapter(connection_source=pool))
    for category in categories or ("orders",):
        await consumer.accept(store.category(category=category))


@pytest_asyncio.fixture
async def pool(postgres_pool: Pool) -> Pool:
    async with postgres_pool.connection() as connection:
        await connection.execute(APPLIED_TABLE)
    return postgres_pool


async def test_full_batches_then_the_remainder_in_order(pool: Pool) -> None:
    await publish(pool, "orders", 1203)
    consumer = transactional(pool, InsertingProcessor(), subscriber_id="a")
    await accept(consumer, pool)

    await consumer.consume_all()

    applied = await rows(
        pool, "SELECT sequence_number, batch_size FROM applied ORDER BY row_id"
    )
    sequence_numbers = [row[0] for row in applied]
    assert sequence_numbers == sorted(sequence_numbers)
    assert len(set(sequence_numbers)) == 1203
    # A full batch says the source is behind: the rest in one catch-up batch.
    assert [row[1] for row in applied] == [500] * 500 + [703] * 703
    checkpoints = PostgresCheckpointStore(pool)
    assert await checkpoints.positions(GROUP) == {"orders": sequence_numbers[-1]}


async def test_two_consumers_on_one_source_apply_each_event_once(
    pool: Pool, inserting: type[Inserting]
) -> None:
    await publish(pool, "orders", 1200)
    stale_processor = inserting()
    stale_processor.gate = asyncio.Event()
    lease = timedelta(milliseconds=500)
    stale = transactional(pool, stale_processor, subscriber_id="a", lease=lease)
    fresh = transactional(pool, inserting(), subscriber_id="b", lease=lease)
    await accept(stale, pool)
    await accept(fresh, pool)
    checkpoints = PostgresCheckpointStore(pool)

    stuck = asyncio.create_task(stale.consume_all())
    await asyncio.wait_for(stale_processor.entered.wait(), 10)
    await fresh.consume_all()
    assert fresh.claimed_sources == ()  # the stale one's lease still runs
    await wait_until(
        lambda: checkpoints.is_released(GROUP, "orders"),
        timeout=10,
        description="the stale consumer's lease to expire",
    )
    await fresh.consume_all()
    stale_processor.gate.set()
    await stuck

    assert await applied_counts(pool) == (1200, 1200)
    assert stale.claimed_sources == ()
    assert fresh.claimed_sources == stale.sources
    (claim,) = await checkpoints.claims(GROUP)
    assert (claim.holder.subscriber_id, claim.epoch) == ("b", 2)


async def test_a_poison_event_is_parked_then_retried_once_fixed(
    pool: Pool, inserting: type[Inserting]
) -> None:
    await publish(pool, "orders", 40)
    processor = inserting(poison=[25])
    consumer = transactional(
        pool,
        processor,
        subscriber_id="a",
        batch_size=40,
        poison_attempts=3,
        poison_order=PoisonOrder.NONE,
    )
    await accept(consumer, pool)
    checkpoints = PostgresCheckpointStore(pool)

    for _ in range(3):
        await consumer.consume_all()

    assert await applied_counts(pool) == (39, 39)
    (letter,) = await checkpoints.dead_letters(GROUP)
    (poison,) = await rows(
        pool,
        "SELECT id, sequence_number FROM events WHERE payload->>'n' = '25'",
    )
    assert (letter.source, letter.event_id, letter.sequence_number) == (
        "orders",
        poison[0],
        poison[1],
    )
    assert (letter.attempts, letter.error) == (3, "ValueError: cannot apply order 25")

    processor.poison.clear()
    result = await retry_dead_letters(
        checkpoint_store=checkpoints,
        event_reader=PostgresEventReader(pool),
        group=GROUP,
        processor=processor,
    )

    assert result.applied == [letter]
    assert await applied_counts(pool) == (40, 40)
    assert await checkpoints.dead_letters(GROUP) == []


async def test_a_parked_stream_waits_while_the_others_go_on_and_a_retry_keeps_order(
    pool: Pool, inserting: type[Inserting]
) -> None:
    await publish(pool, "orders", 3, stream="a")  # 0, 1 (poison), 2
    await publish(pool, "orders", 2, 100, stream="b")
    processor = inserting(poison=[1])
    first = transactional(pool, processor, subscriber_id="a", poison_attempts=1)
    await accept(first, pool)
    await first.consume_all()
    await first.release_claims()

    # A new holder keeps the parked stream's later events waiting.
    await publish(pool, "orders", 1, 3, stream="a")
    await publish(pool, "orders", 1, 102, stream="b")
    second = transactional(pool, processor, subscriber_id="b")
    await accept(second, pool)
    await second.consume_all()

    applied = "SELECT e.stream, (e.payload->>'n')::int FROM applied a " + (
        "JOIN events e ON e.id = a.event_id ORDER BY a.row_id"
    )
    assert await rows(pool, applied) == [("a", 0), ("b", 100), ("b", 101), ("b", 102)]
    checkpoints = PostgresCheckpointStore(pool)
    letters = await checkpoints.dead_letters(GROUP)
    assert [(letter.stream, letter.waiting) for letter in letters] == [
        ("orders/a", False),
        ("orders/a", True),
        ("orders/a", True),
    ]

    processor.poison.clear()
    result = await retry_dead_letters(
        checkpoint_store=checkpoints,
        event_reader=PostgresEventReader(pool),
        group=GROUP,
        processor=processor,
    )
    assert [letter.sequence_number for letter in result.applied] == sorted(
        letter.sequence_number for letter in letters
    )
    assert await checkpoints.dead_letters(GROUP) == []

    # The holder still counts the stream as parked: the store frees it.
    await publish(pool, "orders", 1, 4, stream="a")
    await second.consume_all()
    stream_a = [n for stream, n in await rows(pool, applied) if stream == "a"]
    assert stream_a == [0, 1, 2, 3, 4]
    assert await applied_counts(pool) == (8, 8)
    assert await checkpoints.dead_letters(GROUP) == []


async def test_a_retry_waits_for_a_batch_parking_behind_its_letters(
    pool: Pool,
) -> None:
    await publish(pool, "orders", 2, stream="a")  # 0 (poison), 1 waits
    handler = InsertingHandler(poison=[0])
    consumer = transactional(pool, handler, subscriber_id="a", poison_attempts=1)
    await accept(consumer, pool)
    await consumer.consume_all()
    handler.poison.clear()

    # The next batch parks a's new event (locking a's letters), then stalls on b's.
    await publish(pool, "orders", 1, 2, stream="a")
    await publish(pool, "orders", 1, 100, stream="b")
    handler.gate = asyncio.Event()
    # Entered again only by this batch, once it holds a's letters (the first batch
    # set the old event: waiting on it let the retry race ahead of the batch).
    handler.entered = asyncio.Event()
    batch = asyncio.create_task(consumer.consume_all())
    await asyncio.wait_for(handler.entered.wait(), 10)
    retry = asyncio.create_task(
        retry_dead_letters(
            checkpoint_store=PostgresCheckpointStore(pool),
            event_reader=PostgresEventReader(pool),
            group=GROUP,
            processor=InsertingHandler(),
        )
    )

    async def retry_blocked() -> bool:
        ((waiting,),) = await rows(
            pool,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'DELETE FROM consumer_dead_letters%'",
        )
        return bool(waiting)

    await wait_until(retry_blocked, timeout=10, description="the retry to wait")
    handler.gate.set()
    await batch
    result = await retry

    assert len(result.applied) == 3  # the two letters, then the one parked meanwhile
    applied = await rows(
        pool,
        "SELECT e.stream, (e.payload->>'n')::int FROM applied a "
        "JOIN events e ON e.id = a.event_id ORDER BY a.row_id",
    )
    assert [n for stream, n in applied if stream == "a"] == [0, 1, 2]
    assert await PostgresCheckpointStore(pool).dead_letters(GROUP) == []


async def test_stop_stops_only_the_poisoned_source(pool: Pool) -> None:
    await publish(pool, "orders-1", 10)
    await publish(pool, "orders-2", 10, start=100)
    consumer = transactional(
        pool,
        InsertingProcessor(poison=[4]),
        subscriber_id="a",
        categories=("orders-1", "orders-2"),
        on_poison=PoisonPolicy.STOP,
        poison_attempts=1,
    )
    await accept(consumer, pool, "orders-1", "orders-2")

    with pytest.raises(Exception, match="orders-1: event"):
        await consumer.consume_all()

    by_category = dict(
        await rows(pool, "SELECT category, count(*) FROM applied GROUP BY category")
    )
    assert by_category == {"orders-1": 4, "orders-2": 10}
    assert list(consumer.stopped_sources) == ["orders-1"]


async def test_a_restarted_server_mid_batch_loses_and_repeats_nothing(
    throwaway_postgres: ThrowawayPostgres,
) -> None:
    info = throwaway_postgres.connection_info
    await migrate(info.conninfo)
    async with AsyncConnectionPool[AsyncConnection[Any]](
        info.conninfo, min_size=1, max_size=4, open=False, reconnect_timeout=60
    ) as pool:
        async with pool.connection() as connection:
            await connection.execute(APPLIED_TABLE)
        await publish(pool, "orders", 1500)
        processor = InsertingProcessor()
        processor.gate = asyncio.Event()
        consumer = transactional(pool, processor, subscriber_id="a")
        await accept(consumer, pool)

        first_poll = asyncio.create_task(consumer.consume_all())
        await asyncio.wait_for(processor.entered.wait(), 10)
        await asyncio.to_thread(throwaway_postgres.restart)
        processor.gate.set()
        with pytest.raises((psycopg.Error, ExceptionGroup)):
            await first_poll
        processor.gate = None

        async def everything_applied() -> bool:
            with contextlib.suppress(psycopg.Error):
                await consumer.consume_all()
            with contextlib.suppress(psycopg.Error):
                return await applied_counts(pool) == (1500, 1500)
            return False

        await wait_until(
            everything_applied, timeout=60, description="all 1500 events applied"
        )
        await consumer.consume_all()
        assert await applied_counts(pool) == (1500, 1500)


# --- the runtime --------------------------------------------------------------------


def node(node_id: str, database: ConnectionInfo, pool: Pool) -> EventRuntime:
    broker = make_event_broker(
        node_id,
        EventBrokerType.Distributed,
        EventBrokerStorageType.Postgres,
        settings=DistributedEventBrokerSettings(
            subscriber_manager_heartbeat_interval=timedelta(milliseconds=200),
            coordinator_distribution_interval=timedelta(milliseconds=200),
            coordinator_leadership_attempt_interval=timedelta(milliseconds=200),
            observer_synchronisation_interval=timedelta(milliseconds=200),
        ),
        connection_settings=database.connection_settings(),
        connection_pool=pool,
    )
    return EventRuntime(
        node_id,
        broker,
        ServiceManager(),
        EventConsumerSettings(poll_interval=timedelta(milliseconds=50)),
    )


@pytest_asyncio.fixture
async def runtimes(
    postgres_database: ConnectionInfo, pool: Pool
) -> AsyncIterator[list[EventRuntime]]:
    started: list[EventRuntime] = []
    yield started
    for runtime in started:
        await runtime.stop()


async def test_two_nodes_share_the_sources_and_apply_each_event_once(
    postgres_database: ConnectionInfo, pool: Pool, runtimes: list[EventRuntime]
) -> None:
    categories = [f"orders-{n}" for n in range(4)]
    for index, category in enumerate(categories):
        await publish(pool, category, 300, start=index * 1000)
    for name in ("node-1", "node-2"):
        runtime = node(name, postgres_database, pool)
        await runtime.register_subscription_consumer(
            transactional(
                pool,
                InsertingProcessor(),
                subscriber_id=name,
                categories=categories,
                lease=timedelta(seconds=30),
            )
        )
        await runtime.start()
        runtimes.append(runtime)

    async def all_applied() -> bool:
        return await applied_counts(pool) == (1200, 1200)

    await wait_until(all_applied, timeout=30, description="1200 events applied")
    assert all(runtime.status is ProcessStatus.RUNNING for runtime in runtimes)

    # A graceful stop releases the claims: the other node takes the sources over
    # at once, not after the 30 s lease.
    await runtimes[0].stop()
    checkpoints = PostgresCheckpointStore(pool)
    assert all(
        claim.released
        for claim in await checkpoints.claims(GROUP)
        if claim.holder.node_id == "node-node-1"
    )
    for index, category in enumerate(categories):
        await publish(pool, category, 50, start=index * 1000 + 300)

    async def all_applied_by_the_stayer() -> bool:
        return await applied_counts(pool) == (1400, 1400)

    await wait_until(
        all_applied_by_the_stayer, timeout=8, description="1400 events applied"
    )
    assert {claim.holder.node_id for claim in await checkpoints.claims(GROUP)} == {
        "node-node-2"
    }


async def test_a_stopped_source_shows_the_node_errored(
    postgres_database: ConnectionInfo, pool: Pool, runtimes: list[EventRuntime]
) -> None:
    await publish(pool, "orders", 10)
    runtime = node("node-1", postgres_database, pool)
    await runtime.register_subscription_consumer(
        transactional(
            pool,
            InsertingProcessor(poison=[3]),
            subscriber_id="a",
            on_poison=PoisonPolicy.STOP,
            poison_attempts=2,
        )
    )
    await runtime.start()
    runtimes.append(runtime)

    await wait_until(
        lambda: runtime.status is ProcessStatus.ERRORED,
        timeout=30,
        description="the node to show the stopped source",
    )
    assert await applied_counts(pool) == (3, 3)


async def test_reads_leave_pooled_connections_as_they_found_them(
    postgres_database: ConnectionInfo,
) -> None:
    async with AsyncConnectionPool[AsyncConnection[Any]](
        postgres_database.conninfo, min_size=1, max_size=1, open=False
    ) as single:
        await publish(single, "orders", 3)
        reader = PostgresEventReader(single)
        checkpoints = PostgresCheckpointStore(single)

        events = await reader.read(
            CategoryIdentifier(category="orders"), after=None, limit=10
        )
        await checkpoints.positions(GROUP)

        assert [number(event) for event in events] == [0, 1, 2]
        async with single.connection() as connection:
            assert connection.autocommit is False


class CountingReader(PostgresEventReader):
    """Counts the reads of each source and the head queries."""

    def __init__(self, pool: Pool) -> None:
        super().__init__(pool)
        self.reads: list[str] = []
        self.head_queries = 0

    async def read(
        self, source: Any, *, after: int | None, limit: int
    ) -> Sequence[StoredEvent]:
        self.reads.append(source.category)
        return await super().read(source, after=after, limit=limit)

    async def heads(self, sources: Sequence[Any]) -> Any:
        self.head_queries += 1
        return await super().heads(sources)


async def test_an_idle_poll_costs_one_query_and_a_wake_reads_its_categories(
    pool: Pool,
) -> None:
    categories = ("orders-0", "orders-1", "orders-2", "orders-3")
    for category in categories:
        await publish(pool, category, 3)
    reader = CountingReader(pool)
    consumer = make_transactional_consumer(
        event_store=EventStore(
            adapter=PostgresEventStorageAdapter(connection_source=pool)
        ),
        checkpoint_store=PostgresCheckpointStore(pool),
        subscriber_group=GROUP,
        subscription_requests=[CategoryIdentifier(category=c) for c in categories],
        processor=InsertingProcessor(),
        subscriber_id="a",
        event_reader=reader,
    )
    await accept(consumer, pool, *categories)
    await consumer.consume_all()
    assert await applied_counts(pool) == (12, 12)

    reader.reads.clear()
    reader.head_queries = 0
    await consumer.consume_all()
    assert (reader.head_queries, reader.reads) == (1, [])

    await publish(pool, "orders-2", 2, start=100)
    await consumer.consume_all()
    assert reader.reads == ["orders-2"]  # the only source with new events

    reader.reads.clear()
    await publish(pool, "orders-1", 1, start=200)
    await publish(pool, "orders-3", 1, start=300)
    await consumer.consume_categories(frozenset({"orders-1"}))
    assert "orders-3" not in reader.reads
    assert "orders-1" in reader.reads
    assert await applied_counts(pool) == (15, 15)
    await consumer.consume_all()  # the next full poll: orders-3 too
    assert await applied_counts(pool) == (16, 16)
