"""Liveness on PostgreSQL: a holder cut off in the middle of its commit, or a
source that blocks, must not stall anyone else beyond a stated bound.

The cut is simulated in-process: a holder runs its checkpoint statement and then
never sends COMMIT, exactly what the server sees of a node frozen or cut off at
that moment (its backend sits ``idle in transaction`` with the claim row locked).
Real partitions and signals are the fault-injection run's (``testing/chaos``).
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.types import CategoryIdentifier, NewEvent, StoredEvent
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.consumers import (
    BatchProcessor,
    ClaimLostError,
    Holder,
    PostgresCheckpointStore,
    Transaction,
    make_transactional_consumer,
)
from eventcomposition.database import ConnectionTimeouts, PostgresDatabase
from eventcomposition.runtime import ConsumerService, EventConsumerSettings
from eventcomposition.schema import migrate
from eventcomposition.testing import ThrowawayPostgres
from eventcomposition.testing.postgres import ConnectionInfo
from eventcomposition.testing.waiting import wait_until

type Pool = AsyncConnectionPool[AsyncConnection[Any]]

GROUP = "liveness"
SOURCE = "orders"
LEASE = timedelta(seconds=1)
BATCH_TIMEOUT = timedelta(seconds=3)
STUCK = Holder(node_id="frozen", subscriber_id="s")
TAKER = Holder(node_id="taker", subscriber_id="s")


@pytest_asyncio.fixture
async def bounded_pool(postgres_database: ConnectionInfo) -> AsyncIterator[Pool]:
    """A node's pool, with the server ending sessions idle in a transaction
    for as long as the lease."""
    database = PostgresDatabase(
        postgres_database.conninfo,
        where="test",
        timeouts=ConnectionTimeouts(
            idle_in_transaction=LEASE, tcp_user_timeout=timedelta(seconds=2)
        ),
    )
    async with database as pool:
        yield pool


async def _stuck_in_commit(
    store: PostgresCheckpointStore, entered: asyncio.Event
) -> None:
    """Claim, run the checkpoint statement, then never commit."""
    claim = await store.claim(GROUP, SOURCE, STUCK, LEASE)
    assert claim is not None
    with contextlib.suppress(psycopg.Error):
        async with store.transaction() as transaction:
            await store.advance(transaction, claim, 1, LEASE)
            entered.set()
            await asyncio.sleep(3600)


async def test_a_claim_does_not_wait_on_a_holder_inside_its_commit(
    postgres_pool: Pool,
) -> None:
    # No server-side limit here: only the claim's own refusal to wait.
    store = PostgresCheckpointStore(postgres_pool)
    entered = asyncio.Event()
    holder = asyncio.create_task(_stuck_in_commit(store, entered))
    try:
        await asyncio.wait_for(entered.wait(), 10)
        await asyncio.sleep(LEASE.total_seconds() + 0.2)

        async with asyncio.timeout(2):
            claim = await store.claim(GROUP, SOURCE, TAKER, LEASE)

        assert claim is None  # locked: nothing this time, tried again next poll
    finally:
        holder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holder


async def test_a_holder_cut_off_before_its_commit_is_taken_over_within_the_lease(
    bounded_pool: Pool, postgres_pool: Pool
) -> None:
    stuck = PostgresCheckpointStore(bounded_pool)
    taker = PostgresCheckpointStore(postgres_pool)
    entered = asyncio.Event()
    holder = asyncio.create_task(_stuck_in_commit(stuck, entered))
    try:
        await asyncio.wait_for(entered.wait(), 10)
        cut_at = time.monotonic()

        await wait_until(
            lambda: _claimed(taker),
            timeout=10,
            interval=0.05,
            description="the source claimed by the other holder",
        )

        took = time.monotonic() - cut_at
        # Lease (1 s) + the server ending the idle session (1 s, from the same
        # moment) + a margin; before the limit it never came.
        assert took < LEASE.total_seconds() + 1.5, took
        # The stuck holder's checkpoint was rolled back with its session.
        assert await taker.position(GROUP, SOURCE) is None
    finally:
        holder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holder


async def _claimed(store: PostgresCheckpointStore) -> bool:
    async with asyncio.timeout(2):
        return await store.claim(GROUP, SOURCE, TAKER, LEASE) is not None


async def test_pooled_connections_bound_lost_peers(bounded_pool: Pool) -> None:
    async with bounded_pool.connection() as connection:
        options = {
            option.keyword.decode(): (option.val or b"").decode()
            for option in connection.pgconn.info
        }
        cursor = await connection.execute(
            "SELECT current_setting('idle_in_transaction_session_timeout'), "
            "current_setting('tcp_keepalives_idle')"
        )
        server = await cursor.fetchone()

    assert options["keepalives"] == "1"
    assert options["tcp_user_timeout"] == "2000"
    assert server is not None
    assert server[0] == "1s"


class BlockingProcessor(BatchProcessor):
    """Blocks for good on the events of one category; applies the others."""

    def __init__(self, blocked: str) -> None:
        self.blocked = blocked
        self.applied: list[str] = []

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        if events[0].category == self.blocked:
            await asyncio.Event().wait()
        self.applied.extend(event.category for event in events)


async def test_a_blocked_source_stops_neither_the_others_nor_their_renewals(
    postgres_pool: Pool,
) -> None:
    store = EventStore(
        adapter=PostgresEventStorageAdapter(connection_source=postgres_pool)
    )
    checkpoints = PostgresCheckpointStore(postgres_pool)
    processor = BlockingProcessor(blocked="stuck")
    consumer = make_transactional_consumer(
        event_store=store,
        checkpoint_store=checkpoints,
        subscriber_group=GROUP,
        subscription_requests=[
            CategoryIdentifier(category="free"),
            CategoryIdentifier(category="stuck"),
        ],
        processor=processor,
        claim_lease=LEASE,
        batch_timeout=BATCH_TIMEOUT,
    )
    for category in ("free", "stuck"):
        await consumer.accept(store.category(category=category))
    await _publish(store, "free")
    await consumer.consume_all()  # both claimed, free's event applied
    await _publish(store, "stuck")
    await _publish(store, "free")

    started = time.monotonic()
    polling = asyncio.create_task(consumer.consume_all())
    try:
        # While "stuck" blocks, "free" keeps its claim: renewed meanwhile.
        for _ in range(3):
            await asyncio.sleep(LEASE.total_seconds() * 0.8)
            assert await _lease_left(postgres_pool, "free") > 0, "free's lease lapsed"
        # The blocked batch is abandoned after batch_timeout and the poll ends
        # (a transient failure of that source), so the others' next poll comes.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(BATCH_TIMEOUT.total_seconds() + 2):
                await polling
        assert time.monotonic() - started < BATCH_TIMEOUT.total_seconds() + 2
    finally:
        polling.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await polling
    await _publish(store, "free")
    with contextlib.suppress(TimeoutError):
        await consumer.consume_all()
    assert processor.applied == ["free", "free", "free"]


async def _publish(store: EventStore, category: str) -> None:
    await store.stream(category=category, stream="s").publish(
        events=[NewEvent(name="happened", payload={})]
    )


async def _lease_left(pool: Pool, source: str) -> float:
    async with pool.connection() as connection:
        cursor = await connection.execute(
            "SELECT extract(epoch FROM lease_expires_at - now()) FROM consumer_claims "
            'WHERE "group" = %s AND source = %s',
            (GROUP, source),
        )
        row = await cursor.fetchone()
    assert row is not None, f"no claim of {source}"
    return float(row[0])


class RecordingProcessor(BatchProcessor):
    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        async with transaction.connection.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO applied_once (event_id) VALUES (%s)",
                [(event.id,) for event in events],
            )


async def test_a_commit_the_server_lost_does_not_make_the_consumer_skip_events(
    postgres_pool: Pool,
) -> None:
    """A server that acknowledges commits before they are durable
    (``synchronous_commit = off``, a failover to a lagging replica) can lose an
    acknowledged batch in a crash. The consumer must not carry on from the
    position it remembers, over the events of the lost batch."""
    async with postgres_pool.connection() as connection:
        await connection.execute("CREATE TABLE applied_once (event_id text)")
    store = EventStore(
        adapter=PostgresEventStorageAdapter(connection_source=postgres_pool)
    )
    consumer = make_transactional_consumer(
        event_store=store,
        checkpoint_store=PostgresCheckpointStore(postgres_pool),
        subscriber_group=GROUP,
        subscription_requests=[CategoryIdentifier(category="orders")],
        processor=RecordingProcessor(),
        claim_lease=LEASE,
    )
    await consumer.accept(store.category(category="orders"))
    for _ in range(2):
        await _publish(store, "orders")
    await consumer.consume_all()  # both applied, checkpoint at the second
    # The crash: that batch's commit is gone (its rows and its checkpoint).
    async with postgres_pool.connection() as connection:
        await connection.execute("DELETE FROM applied_once")
        await connection.execute("DELETE FROM consumer_checkpoints")
    await _publish(store, "orders")

    with contextlib.suppress(ClaimLostError):
        await consumer.consume_all()
    await consumer.consume_all()

    async with postgres_pool.connection() as connection:
        cursor = await connection.execute(
            "SELECT e.id, count(a.event_id) FROM events e "
            "LEFT JOIN applied_once a ON a.event_id = e.id "
            "WHERE e.category = 'orders' GROUP BY e.id"
        )
        counts = [count for _, count in await cursor.fetchall()]
    assert counts == [1, 1, 1]


class RecordingByCategory(BatchProcessor):
    def __init__(self) -> None:
        self.applied: list[str] = []

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        self.applied.extend(event.category for event in events)


async def test_a_source_blocked_in_its_commit_delays_no_other_source_of_the_node(
    postgres_pool: Pool, postgres_database: ConnectionInfo
) -> None:
    """The runtime's service polls a consumer whose "stuck" source is blocked in
    its checkpoint statement (another session holds that row): "free" still
    applies each new event within a fraction of ``batch_timeout``, its claim stays
    renewed, and a drain finishes the blocked batch before releasing."""
    store = EventStore(
        adapter=PostgresEventStorageAdapter(connection_source=postgres_pool)
    )
    checkpoints = PostgresCheckpointStore(postgres_pool)
    processor = RecordingByCategory()
    consumer = make_transactional_consumer(
        event_store=store,
        checkpoint_store=checkpoints,
        subscriber_group=GROUP,
        subscription_requests=[
            CategoryIdentifier(category="free"),
            CategoryIdentifier(category="stuck"),
        ],
        processor=processor,
        claim_lease=LEASE,
        batch_timeout=timedelta(seconds=20),
    )
    for category in ("free", "stuck"):
        await consumer.accept(store.category(category=category))
        await _publish(store, category)
    await consumer.consume_all()  # both claimed, with checkpoints
    epochs = await _epochs(postgres_pool)
    stuck_at = await checkpoints.position(GROUP, "stuck")
    assert stuck_at is not None
    # The safety-net poll comes rarely (as with notifications on): wakes drive.
    service = ConsumerService(
        "liveness", consumer, EventConsumerSettings(poll_interval=LEASE * 10)
    )
    running = asyncio.create_task(service.execute())
    async with await AsyncConnection.connect(postgres_database.conninfo) as locker:
        await locker.execute(
            "SELECT 1 FROM consumer_checkpoints "
            "WHERE \"group\" = %s AND source = 'stuck' FOR UPDATE",
            (GROUP,),
        )
        try:
            await _publish(store, "stuck")
            service.wake(["stuck"])
            await wait_until(
                lambda: _blocked_on_a_lock(locker),
                timeout=10,
                description="stuck's commit waiting on the checkpoint row",
            )
            for count in range(2, 6):
                await _publish(store, "free")
                service.wake(["free"])
                started = time.monotonic()
                await wait_until(
                    lambda count=count: processor.applied.count("free") == count,  # type: ignore[misc]
                    timeout=10,
                    description=f"free's event {count} applied",
                )
                # Applied at its usual pace, not after stuck's 20 s.
                assert time.monotonic() - started < 2
                assert await _lease_left(postgres_pool, "free") > 0
            assert await _epochs(postgres_pool) == epochs, "a claim was taken anew"
            service.request_drain()
            await asyncio.sleep(0.2)
            assert not running.done(), "the drain did not wait for stuck's batch"
        finally:
            await locker.rollback()  # stuck's batch commits now
    await asyncio.wait_for(running, 10)
    assert processor.applied.count("stuck") == 2
    assert (await checkpoints.position(GROUP, "stuck") or 0) > stuck_at
    assert all(record.released for record in await checkpoints.claims(GROUP)), (
        "the drain released the claims"
    )


async def _blocked_on_a_lock(locker: AsyncConnection[Any]) -> bool:
    cursor = await locker.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND pid <> pg_backend_pid()"
    )
    row = await cursor.fetchone()
    return row is not None and row[0] > 0


async def _epochs(pool: Pool) -> dict[str, int]:
    async with pool.connection() as connection:
        cursor = await connection.execute(
            'SELECT source, epoch FROM consumer_claims WHERE "group" = %s', (GROUP,)
        )
        return {source: int(epoch) for source, epoch in await cursor.fetchall()}


async def test_a_source_idle_through_a_crash_reads_the_sequence_numbers_handed_out_again(
    throwaway_postgres: ThrowawayPostgres,
) -> None:
    """A crash of a server that commits asynchronously can lose the last events
    it acknowledged, the batch that applied them (rows and checkpoint) and the
    WAL record of the sequence's last values: after recovery new events get the
    lost events' numbers again. A source that was idle through the crash saw no
    error; it must not pass over the new events below the position it
    remembers (seed 2 of the fault-injection run lost 4 events so)."""
    info = throwaway_postgres.connection_info
    await migrate(info.conninfo)
    pool: Pool = AsyncConnectionPool(info.conninfo, min_size=2, open=False)
    await pool.open(wait=True)
    try:
        async with pool.connection() as connection:
            await connection.execute("CREATE TABLE applied_once (event_id text)")
        store = EventStore(adapter=PostgresEventStorageAdapter(connection_source=pool))
        consumer = make_transactional_consumer(
            event_store=store,
            checkpoint_store=PostgresCheckpointStore(pool),
            subscriber_group=GROUP,
            subscription_requests=[
                CategoryIdentifier(category="orders"),
                CategoryIdentifier(category="other"),
            ],
            processor=RecordingProcessor(),
            claim_lease=LEASE,
        )
        await consumer.accept(store.category(category="orders"))
        await consumer.accept(store.category(category="other"))
        await _publish(store, "other")
        for _ in range(3):
            await _publish(store, "orders")
        await consumer.consume_all()
        kept, *lost = await _sequence_numbers(pool, "orders")
        assert len(lost) == 2

        # What the crash takes: the last two events, the batch that applied them
        # (with the checkpoint it moved), the sequence's last values.
        async with pool.connection() as connection:
            await connection.execute(
                "DELETE FROM events WHERE sequence_number = ANY(%s)", (lost,)
            )
            await connection.execute(
                "DELETE FROM applied_once a USING events e "
                "WHERE a.event_id = e.id AND e.sequence_number > %s",
                (kept,),
            )
            await connection.execute(
                "DELETE FROM applied_once a WHERE NOT EXISTS "
                "(SELECT 1 FROM events e WHERE e.id = a.event_id)"
            )
            await connection.execute(
                "UPDATE consumer_checkpoints SET sequence_number = %s "
                "WHERE source = 'orders'",
                (kept,),
            )
            await connection.execute(
                "SELECT setval(pg_get_serial_sequence('events', 'sequence_number'), "
                "%s)",
                (kept,),
            )
        async with await AsyncConnection.connect(
            info.conninfo, autocommit=True
        ) as admin:
            await admin.execute("CHECKPOINT")
        await asyncio.to_thread(throwaway_postgres.shutdown, mode="immediate")
        await asyncio.to_thread(throwaway_postgres.start)
        await pool.check()  # the node's other work met the dead connections
        await _publish(store, "orders")
        (again,) = set(await _sequence_numbers(pool, "orders")) - {kept}
        assert again <= max(lost)  # a number handed out before the crash

        async def applied() -> bool:
            with contextlib.suppress(psycopg.Error):
                await consumer.consume_all()
            async with pool.connection() as connection:
                cursor = await connection.execute(
                    "SELECT count(*) FROM applied_once a JOIN events e "
                    "ON a.event_id = e.id WHERE e.sequence_number = %s",
                    (again,),
                )
                row = await cursor.fetchone()
            return row is not None and row[0] == 1

        await wait_until(
            applied, timeout=5.0, description="the event after the crash applied"
        )
    finally:
        await pool.close()


async def _sequence_numbers(pool: Pool, category: str) -> list[int]:
    async with pool.connection() as connection:
        cursor = await connection.execute(
            "SELECT sequence_number FROM events WHERE category = %s "
            "ORDER BY sequence_number",
            (category,),
        )
        return [int(row[0]) for row in await cursor.fetchall()]
