"""Rebuilding a versioned projection on PostgreSQL while it is processed and read.

One process: a live version under continuous publishing, a rebuild to version 2 with
a changed processor, readers polling the stable schema the whole time, the swap; a
rebuild resumed after its consumers stopped; cancel; dead letters; a second rebuild
refused; reset.
"""

import asyncio
import contextlib
from argparse import Namespace
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.types import CategoryIdentifier, NewEvent, StoredEvent
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.cli.projections import show_status
from eventcomposition.consumers import (
    BatchProcessor,
    PoisonOrder,
    PostgresCheckpointStore,
    Transaction,
    TransactionalConsumer,
    make_transactional_consumer,
)
from eventcomposition.projections import (
    ProjectionCatalog,
    ProjectionError,
    RebuildInProgressError,
    VersionedConsumer,
    VersionedProjection,
    VersionProcessor,
    VersionState,
    make_versioned_consumer,
)
from eventcomposition.runtime import ConsumerService, EventConsumerSettings
from eventcomposition.schema import Migration
from eventcomposition.testing.waiting import wait_until

type Pool = AsyncConnectionPool[AsyncConnection[Any]]

GROUP = "items"
CATEGORIES = ("left", "right")
ITEMS = Migration(
    "items",
    "CREATE TABLE items (seq bigint NOT NULL, category text NOT NULL, "
    "n bigint NOT NULL, value bigint NOT NULL)",
)
READ = (
    "SELECT category, count(*), sum(n), sum(value), max(seq) FROM items.items "
    "GROUP BY category"
)


class Items(BatchProcessor):
    """One plain insert per event (no idempotency of its own: a repeat shows);
    ``factor`` is what changes between versions; ``poison`` events fail."""

    def __init__(self, factor: int, poison: Sequence[int] = ()) -> None:
        self.factor = factor
        self.poison = set(poison)
        self.rebuilding_seen: set[bool] = set()

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        self.rebuilding_seen.add(transaction.rebuilding)
        for event in events:
            if number(event) in self.poison:
                raise ValueError(f"cannot apply {number(event)}")
        async with transaction.connection.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO items (seq, category, n, value) VALUES (%s, %s, %s, %s)",
                [
                    (
                        event.sequence_number,
                        event.category,
                        number(event),
                        number(event) * self.factor,
                    )
                    for event in events
                ],
            )


def number(event: StoredEvent) -> int:
    assert isinstance(event.payload, dict)
    value = event.payload["n"]
    assert isinstance(value, int)
    return value


@dataclass
class Processors:
    """The processor of each version, kept to look at afterwards."""

    factors: dict[int, int] = field(default_factory=lambda: {1: 1})
    poison: dict[int, list[int]] = field(default_factory=dict)
    made: dict[int, Items] = field(default_factory=dict)

    def __call__(self, version: int) -> BatchProcessor:
        processor = self.made.get(version)
        if processor is None:
            processor = Items(
                self.factors.get(version, version), self.poison.get(version, ())
            )
            self.made[version] = processor
        return processor


class Node:
    """A versioned consumer holding every source, polled until stopped."""

    def __init__(
        self,
        pool: Pool,
        processors: Processors,
        *,
        rebuild_batch_size: int = 500,
        retired_grace: timedelta | None = None,
    ) -> None:
        self.pool = pool
        self.store = EventStore(
            adapter=PostgresEventStorageAdapter(connection_source=pool)
        )
        self.consumer: VersionedConsumer = make_versioned_consumer(
            event_store=self.store,
            checkpoint_store=PostgresCheckpointStore(pool),
            projection=VersionedProjection(
                group=GROUP,
                processor_for=processors,
                migrations=[ITEMS],
                rebuild_batch_size=rebuild_batch_size,
                retired_grace=retired_grace,
            ),
            subscription_requests=[CategoryIdentifier(category=c) for c in CATEGORIES],
            batch_size=100,
            subscriber_id="node",
            node_id="node",
            refresh_interval=timedelta(milliseconds=100),
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for category in CATEGORIES:
            await self.consumer.accept(self.store.category(category=category))
        self._task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await self.consumer.consume_all()
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.release_claims()


async def publish(pool: Pool, count: int, start: int = 0) -> None:
    store = EventStore(adapter=PostgresEventStorageAdapter(connection_source=pool))
    for first in range(start, start + count, 200):
        for category in CATEGORIES:
            await store.stream(category=category, stream="s").publish(
                events=[
                    NewEvent(name="added", payload={"n": n})
                    for n in range(first, min(first + 200, start + count))
                ]
            )


async def fetch(pool: Pool, query: str) -> list[tuple[Any, ...]]:
    async with pool.connection() as connection:
        cursor = await connection.execute(query)
        return await cursor.fetchall()


async def events_by_category(pool: Pool) -> dict[str, list[tuple[int, int]]]:
    """(sequence number, n) of every event, by category, in order."""
    found: dict[str, list[tuple[int, int]]] = {c: [] for c in CATEGORIES}
    for category, seq, n in await fetch(
        pool,
        "SELECT category, sequence_number, (payload->>'n')::bigint FROM events "
        "ORDER BY sequence_number",
    ):
        found[category].append((int(seq), int(n)))
    return found


async def table_rows(pool: Pool, table: str) -> list[tuple[int, str, int, int]]:
    return [
        (int(a), str(b), int(c), int(d))
        for a, b, c, d in await fetch(
            pool, f"SELECT seq, category, n, value FROM {table} ORDER BY seq"
        )
    ]


async def from_scratch(pool: Pool, factor: int) -> list[tuple[int, str, int, int]]:
    events = await events_by_category(pool)
    return sorted(
        (seq, category, n, n * factor)
        for category, listed in events.items()
        for seq, n in listed
    )


async def all_applied(pool: Pool, table: str, factor: int) -> bool:
    try:
        rows = await table_rows(pool, table)
    except psycopg.errors.UndefinedTable:
        return False  # not created yet
    return rows == await from_scratch(pool, factor)


@pytest_asyncio.fixture
async def nodes(postgres_pool: Pool) -> AsyncIterator[list[Node]]:
    started: list[Node] = []
    yield started
    for node in started:
        await node.stop()


async def start_node(
    pool: Pool, processors: Processors, nodes: list[Node], **options: Any
) -> Node:
    node = Node(pool, processors, **options)
    await node.start()
    nodes.append(node)
    return node


async def live_version(catalog: ProjectionCatalog) -> int | None:
    for version in await catalog.versions(GROUP):
        if version.state is VersionState.LIVE:
            return version.version
    return None


async def test_a_rebuild_swaps_atomically_under_publishing_and_reading(
    postgres_pool: Pool, nodes: list[Node]
) -> None:
    pool = postgres_pool
    catalog = ProjectionCatalog(pool)
    processors = Processors(factors={1: 1, 2: 10})
    await publish(pool, 1000)
    await start_node(pool, processors, nodes)
    await wait_until(
        lambda: all_applied(pool, "items_v1.items", 1),
        timeout=20,
        description="version 1 to apply every event",
    )

    samples: list[list[tuple[Any, ...]]] = []
    publishing = True

    async def publisher() -> None:
        start = 1000
        while publishing:
            await publish(pool, 10, start)
            start += 10
            await asyncio.sleep(0.01)

    async def reader() -> None:
        while publishing:
            samples.append(await fetch(pool, READ))
            await asyncio.sleep(0.005)

    tasks = [asyncio.create_task(publisher()), asyncio.create_task(reader())]
    try:
        requested = await catalog.request_rebuild(GROUP)
        assert (requested.version, requested.state) == (2, VersionState.BUILDING)
        with pytest.raises(RebuildInProgressError, match="already running"):
            await catalog.request_rebuild(GROUP)

        async def swapped() -> bool:
            return await live_version(catalog) == 2

        await wait_until(swapped, timeout=30, description="the swap to version 2")
        await asyncio.sleep(0.3)  # readers see version 2 for a while
    finally:
        publishing = False
        await asyncio.gather(*tasks)

    await wait_until(
        lambda: all_applied(pool, "items_v2.items", 10),
        timeout=20,
        description="version 2 to apply every event",
    )
    # Version 2 equals a projection computed from scratch; the readers' name too.
    assert await table_rows(pool, "items.items") == await from_scratch(pool, 10)

    # Every sample was one version, whole: per category a prefix of the events,
    # each counted once, all at version 1's factor or all at version 2's.
    events = await events_by_category(pool)
    seen_factors: list[int] = []
    highest: dict[str, int] = {}
    for sample in samples:
        factors = set()
        for category, count, sum_n, sum_value, max_seq in sample:
            prefix = [n for seq, n in events[category] if seq <= max_seq]
            assert (count, sum_n) == (len(prefix), sum(prefix)), sample
            assert sum_value in (sum_n, 10 * sum_n), sample
            if sum_n:
                factors.add(1 if sum_value == sum_n else 10)
            assert max_seq >= highest.get(category, 0), "a reader saw it go back"
            highest[category] = max_seq
        assert len(factors) <= 1, f"a mix of versions: {sample}"
        seen_factors.extend(factors)
    assert seen_factors[0] == 1
    assert seen_factors[-1] == 10
    assert seen_factors == sorted(seen_factors), "version 1 came back after the swap"

    # The rebuild ran with transaction.rebuilding, the live version never did.
    assert processors.made[1].rebuilding_seen == {False}
    assert True in processors.made[2].rebuilding_seen

    # Version 1 is retired, frozen at the swap, and kept until dropped.
    states = {v.version: v.state for v in await catalog.versions(GROUP)}
    assert states == {1: VersionState.RETIRED, 2: VersionState.LIVE}
    retired_rows = len(await table_rows(pool, "items_v1.items"))
    await asyncio.sleep(0.3)
    assert len(await table_rows(pool, "items_v1.items")) == retired_rows
    with pytest.raises(ProjectionError, match="is live"):
        await catalog.drop(GROUP, 2)
    await catalog.drop(GROUP, 1)
    assert (
        await fetch(pool, "SELECT 1 FROM pg_namespace WHERE nspname = 'items_v1'") == []
    )


async def test_a_rebuild_resumes_after_its_nodes_stop_and_can_be_cancelled(
    postgres_pool: Pool, nodes: list[Node]
) -> None:
    pool = postgres_pool
    catalog = ProjectionCatalog(pool)
    processors = Processors()
    await publish(pool, 1500)
    first = await start_node(pool, processors, nodes, rebuild_batch_size=50)
    await wait_until(
        lambda: all_applied(pool, "items_v1.items", 1),
        timeout=30,
        description="version 1 to apply every event",
    )
    await catalog.request_rebuild(GROUP)

    async def under_way() -> bool:
        positions = await catalog.positions(f"{GROUP}@v2")
        return bool(positions) and min(positions.values()) > 0

    await wait_until(under_way, timeout=20, description="the rebuild to start")
    await first.stop()
    nodes.remove(first)
    progress = await catalog.progress(GROUP)
    assert progress is not None
    assert progress.version == 2
    assert 0 < progress.progress < 1, progress

    await start_node(pool, Processors(), nodes, rebuild_batch_size=500)

    async def swapped() -> bool:
        return await live_version(catalog) == 2

    await wait_until(swapped, timeout=30, description="the resumed rebuild's swap")
    # Each event once: the second node went on from the first one's checkpoints.
    assert await table_rows(pool, "items.items") == await from_scratch(pool, 2)

    await catalog.request_rebuild(GROUP)
    await catalog.cancel(GROUP)
    states = {v.version: v.state for v in await catalog.versions(GROUP)}
    assert states == {
        1: VersionState.RETIRED,
        2: VersionState.LIVE,
        3: VersionState.CANCELLED,
    }
    assert (
        await fetch(pool, "SELECT 1 FROM pg_namespace WHERE nspname = 'items_v3'") == []
    )
    with pytest.raises(ProjectionError, match="nothing to cancel"):
        await catalog.cancel(GROUP)
    # Version numbers are never reused.
    assert (await catalog.request_rebuild(GROUP)).version == 4


async def test_a_rebuild_parks_its_own_dead_letters_and_still_swaps(
    postgres_pool: Pool, nodes: list[Node], capsys: pytest.CaptureFixture[str]
) -> None:
    pool = postgres_pool
    catalog = ProjectionCatalog(pool)
    processors = Processors(poison={2: [7]})
    await publish(pool, 300)
    await start_node(pool, processors, nodes, retired_grace=timedelta(0))
    await wait_until(
        lambda: all_applied(pool, "items_v1.items", 1),
        timeout=20,
        description="version 1 to apply every event",
    )
    await catalog.request_rebuild(GROUP)
    capsys.readouterr()

    # `projections status --follow` off a terminal: plain lines until the swap.
    following = show_status(catalog, Namespace(group=GROUP, follow=True, interval=0.05))
    assert await asyncio.wait_for(following, 30) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == "version 2 of 'items' is live"
    assert await live_version(catalog) == 2
    letters = await PostgresCheckpointStore(pool).dead_letters()
    assert sorted(
        (letter.group, letter.source) for letter in letters if not letter.waiting
    ) == [("items@v2", "left"), ("items@v2", "right")]
    # Each category is one stream: its later events wait behind the parked one
    # (poison_order = "stream"), in the rebuild's own dead letters.
    waiting = {letter.sequence_number for letter in letters if letter.waiting}
    scratch = await from_scratch(pool, 2)
    assert waiting == {row[0] for row in scratch if row[2] > 7}
    expected = [row for row in scratch if row[2] < 7]
    assert await table_rows(pool, "items.items") == expected

    # No grace period: the node drops the retired version itself.
    async def dropped() -> bool:
        states = {v.version: v.state for v in await catalog.versions(GROUP)}
        return states == {1: VersionState.DROPPED, 2: VersionState.LIVE}

    await wait_until(dropped, timeout=10, description="version 1 dropped")
    assert (
        await fetch(pool, "SELECT 1 FROM pg_namespace WHERE nspname = 'items_v1'") == []
    )


async def test_reset_empties_the_live_version_and_fills_it_again(
    postgres_pool: Pool, nodes: list[Node]
) -> None:
    pool = postgres_pool
    catalog = ProjectionCatalog(pool)
    processors = Processors()
    await publish(pool, 200)
    await start_node(pool, processors, nodes)
    await wait_until(
        lambda: all_applied(pool, "items.items", 1),
        timeout=20,
        description="version 1 to apply every event",
    )
    await catalog.reset(GROUP)
    await wait_until(
        lambda: all_applied(pool, "items.items", 1),
        timeout=20,
        description="version 1 to apply every event again",
    )
    with pytest.raises(ProjectionError, match="no live projection version"):
        await catalog.reset("nobody")


async def test_the_swap_waits_for_the_building_version_and_fences_the_live_one(
    postgres_pool: Pool,
) -> None:
    pool = postgres_pool
    catalog = ProjectionCatalog(pool)
    store = EventStore(adapter=PostgresEventStorageAdapter(connection_source=pool))
    checkpoints = PostgresCheckpointStore(pool)
    await catalog.ensure_initial(GROUP, "items", [ITEMS])

    def consumer(group: str, processor: BatchProcessor) -> TransactionalConsumer:
        return make_transactional_consumer(
            event_store=store,
            checkpoint_store=checkpoints,
            subscriber_group=group,
            subscription_requests=[CategoryIdentifier(category=c) for c in CATEGORIES],
            processor=processor,
            batch_size=30,
            subscriber_id=group,
            node_id="node",
        )

    live = consumer(GROUP, VersionProcessor(Items(1), "items_v1", rebuilding=False))
    for category in CATEGORIES:
        await live.accept(store.category(category=category))
    await publish(pool, 100)
    await live.consume_all()
    building_version = await catalog.prepare(
        await catalog.request_rebuild(GROUP), [ITEMS]
    )
    building = consumer(
        "items@v2", VersionProcessor(Items(10), "items_v2", rebuilding=True)
    )
    for category in CATEGORIES:
        await building.accept(store.category(category=category))

    # Not caught up and not to wait: the swap gives up at once, catching nothing
    # up with the live version frozen.
    catch_ups: list[str] = []

    async def catch_up() -> None:
        catch_ups.append("called")

    assert not await catalog.swap(GROUP, 2, catch_up=catch_up, within=timedelta(0))
    assert catch_ups == []
    # Not caught up: the swap gives up and changes nothing.
    assert not await catalog.swap(GROUP, 2, within=timedelta(milliseconds=200))
    assert await table_rows(pool, "items.items") == await from_scratch(pool, 1)
    assert building_version.prepared

    # Caught up while the swap waits (the live version frozen meanwhile).
    await publish(pool, 50, start=100)
    await live.consume_all()
    assert await catalog.swap(GROUP, 2, catch_up=building.consume_all)
    assert await table_rows(pool, "items.items") == await from_scratch(pool, 10)

    # The retired version is fenced: its consumer commits nothing more.
    retired_rows = await table_rows(pool, "items_v1.items")
    await publish(pool, 10, start=150)
    await live.consume_all()
    assert await table_rows(pool, "items_v1.items") == retired_rows
    assert live.claimed_sources == ()
    await building.consume_all()
    assert await table_rows(pool, "items.items") == await from_scratch(pool, 10)
    # Only the building version can be swapped in, and only once.
    assert not await catalog.swap(GROUP, 2)


async def test_a_blocked_source_of_the_live_version_holds_up_only_itself(
    postgres_pool: Pool,
) -> None:
    """Polled by the runtime's service, a versioned consumer's live version lets
    each source progress on its own: while "left" is blocked in its checkpoint
    statement (another session holds the row) and full polls come and go, each
    new event of "right" is applied at once, not after "left" gives up."""
    node = Node(postgres_pool, Processors())
    for category in CATEGORIES:
        await node.consumer.accept(node.store.category(category=category))
    await publish(postgres_pool, 1)
    await node.consumer.consume_all()
    assert await all_applied(postgres_pool, "items.items", 1)
    service = ConsumerService(
        "versioned",
        node.consumer,
        EventConsumerSettings(poll_interval=timedelta(milliseconds=300)),
    )
    running = asyncio.create_task(service.execute())
    try:
        async with postgres_pool.connection() as locker:
            await locker.execute(
                "SELECT 1 FROM consumer_checkpoints WHERE source = 'left' FOR UPDATE"
            )
            await node.store.stream(category="left", stream="s").publish(
                events=[NewEvent(name="added", payload={"n": 1})]
            )
            service.wake(["left"])
            await wait_until(
                lambda: blocked_on_a_lock(postgres_pool),
                timeout=10,
                description="left's commit waiting on its checkpoint row",
            )
            for n in range(1, 4):
                await asyncio.sleep(0.4)  # a full poll comes meanwhile
                await node.store.stream(category="right", stream="s").publish(
                    events=[NewEvent(name="added", payload={"n": n})]
                )
                service.wake(["right"])
                await wait_until(
                    lambda n=n: applied_of(postgres_pool, "right", n + 1),  # type: ignore[misc]
                    timeout=5,
                    description=f"right's event {n} applied while left is blocked",
                )
            await locker.rollback()
        await wait_until(
            lambda: all_applied(postgres_pool, "items.items", 1),
            timeout=10,
            description="left's event applied once its row is free",
        )
    finally:
        service.request_drain()
        await asyncio.wait_for(running, 10)
        await node.consumer.release_claims()


async def blocked_on_a_lock(pool: Pool) -> bool:
    rows = await fetch(
        pool,
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND pid <> pg_backend_pid()",
    )
    return bool(rows[0][0])


async def applied_of(pool: Pool, category: str, count: int) -> bool:
    rows = await fetch(
        pool, f"SELECT count(*) FROM items.items WHERE category = '{category}'"
    )
    return int(rows[0][0]) == count


async def test_the_live_version_takes_the_node_consumer_settings(
    postgres_pool: Pool,
) -> None:
    """What the container hands a versioned consumer from the node's settings
    reaches its live version's transactional consumer."""
    store = EventStore(
        adapter=PostgresEventStorageAdapter(connection_source=postgres_pool)
    )
    consumer = make_versioned_consumer(
        event_store=store,
        checkpoint_store=PostgresCheckpointStore(postgres_pool),
        projection=VersionedProjection(
            group=GROUP, processor_for=Processors(), migrations=[ITEMS]
        ),
        subscription_requests=[CategoryIdentifier(category=c) for c in CATEGORIES],
        poison_order="none",
        read_ahead=True,
    )
    await consumer.refresh()
    live = consumer.live_consumer
    assert live is not None
    assert live.poison_order is PoisonOrder.NONE
    assert live.read_ahead
