"""Repartitioning a group's category: split and merge with transactional consumers,
in memory and on PostgreSQL, each event applied once and each stream in order."""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from logicblocks.event.store import (
    EventStorageAdapter,
    EventStore,
    InMemoryEventStorageAdapter,
    PostgresEventStorageAdapter,
)
from logicblocks.event.types import (
    CategoryIdentifier,
    EventSourceIdentifier,
    NewEvent,
    StoredEvent,
)
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.broker.stores import event_source_factory
from eventcomposition.consumers import (
    BatchProcessor,
    CheckpointStore,
    ClaimLostError,
    InMemoryCheckpointStore,
    PostgresCheckpointStore,
    Transaction,
    TransactionalConsumer,
    make_transactional_consumer,
)
from eventcomposition.consumers.partitions import (
    RepartitionError,
    partitions_of,
)

GROUP = "totals"
STREAMS = [f"customer-{n:03d}" for n in range(60)]

type Pool = AsyncConnectionPool[AsyncConnection[Any]]
type Scenario = Callable[["World"], Awaitable[None]]


class Recording(BatchProcessor):
    """Records each committed event (stream, position) in commit order."""

    def __init__(self, applied: list[tuple[str, int]]) -> None:
        self.applied = applied

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        done = [(e.stream, e.position) for e in events]
        transaction.on_commit(lambda: self.applied.extend(done))


@dataclass
class World:
    adapter: EventStorageAdapter
    checkpoints: CheckpointStore
    applied: list[tuple[str, int]]
    published: int = 0

    async def publish(self, rounds: int) -> None:
        store = EventStore(adapter=self.adapter)
        for _ in range(rounds):
            for stream in STREAMS:
                await store.stream(category="orders", stream=stream).publish(
                    events=[NewEvent(name="placed", payload={})]
                )
        self.published += rounds

    async def consumer(
        self,
        name: str,
        partitions: Sequence[EventSourceIdentifier],
        *,
        batch_size: int = 25,
        lease: timedelta = timedelta(seconds=10),
    ) -> TransactionalConsumer:
        consumer = make_transactional_consumer(
            event_store=EventStore(adapter=self.adapter),
            checkpoint_store=self.checkpoints,
            subscriber_group=GROUP,
            subscription_requests=list(partitions),
            processor=Recording(self.applied),
            batch_size=batch_size,
            subscriber_id=name,
            node_id=f"node-{name}",
            claim_lease=lease,
        )
        sources = event_source_factory(self.adapter)
        for partition in partitions:
            await consumer.accept(sources.construct(partition))
        return consumer

    def check_exactly_once_in_order(self) -> None:
        expected = {(s, p) for s in STREAMS for p in range(self.published)}
        assert len(self.applied) == len(expected), "an event applied twice"
        assert set(self.applied) == expected
        for stream in STREAMS:
            positions = [p for s, p in self.applied if s == stream]
            assert positions == sorted(positions), f"{stream} out of order"


async def consume_some(consumer: TransactionalConsumer, turns: int) -> None:
    """A few batches of each source, leaving the partitions at different points."""
    states = list(consumer._sources.values())
    for index, state in enumerate(states):
        for _ in range(index % turns):
            await consumer._take_turn(state, [])


async def doubling_then_halving_applies_each_event_once_in_order(world: World) -> None:
    await world.publish(3)
    first = await world.consumer("a", partitions_of("orders", 4))
    await first.consume_all()
    await world.publish(4)
    await consume_some(first, 4)  # 4 partitions at 4 different checkpoints
    await first.release_claims()

    doubled = await world.consumer("b", partitions_of("orders", 8))
    await world.publish(1)
    await consume_some(doubled, 3)  # split: starts at the former checkpoints
    await doubled.release_claims()
    assert set(await world.checkpoints.positions(GROUP)) >= {
        p.key for p in partitions_of("orders", 8)
    }

    halved = await world.consumer("c", partitions_of("orders", 2))
    await halved.consume_all()  # merge: floors skip what was applied already

    world.check_exactly_once_in_order()
    # The former partitions can be claimed by nobody any more.
    stale = await world.consumer("d", partitions_of("orders", 8))
    await stale.consume_all()
    assert stale.claimed_sources == ()
    world.check_exactly_once_in_order()


async def a_repartition_waits_for_the_former_partitions_to_be_released(
    world: World,
) -> None:
    await world.publish(2)
    old = await world.consumer("old", partitions_of("orders", 2), batch_size=10)
    await consume_some(old, 2)  # holds partition 1 of 2, mid-way

    new = await world.consumer("new", partitions_of("orders", 4))
    await new.consume_all()
    assert new.claimed_sources == ()  # the former partitions are still claimed

    await old.release_claims()
    await new.consume_all()
    assert len(new.claimed_sources) == 4
    world.check_exactly_once_in_order()


async def a_stale_holder_cannot_commit_after_the_repartition(world: World) -> None:
    await world.publish(2)
    lease = timedelta(milliseconds=200)
    stale = await world.consumer("stale", partitions_of("orders", 1), lease=lease)
    state = next(iter(stale._sources.values()))
    assert await stale._claim(state)
    # Its lease runs out while it is paused; the group is repartitioned meanwhile.
    await _expire(world, lease)
    new = await world.consumer("new", partitions_of("orders", 2))
    await new.consume_all()
    assert len(new.claimed_sources) == 2

    events = await stale.event_reader.read(state.identifier, after=None, limit=10)
    with pytest.raises(ClaimLostError):
        await stale._commit(state, events)
    world.check_exactly_once_in_order()


async def repartitioning_again_before_catching_up_is_refused(world: World) -> None:
    await world.publish(2)
    first = await world.consumer("a", partitions_of("orders", 2), batch_size=5)
    await consume_some(first, 2)  # partition 1 ahead of partition 0
    await first.release_claims()
    merged = await world.consumer("b", partitions_of("orders", 1))
    state = next(iter(merged._sources.values()))
    assert await merged._claim(state)
    assert state.floors  # partition 1's events up to its checkpoint are skipped
    await merged.release_claims()

    again = await world.consumer("c", partitions_of("orders", 4))
    with pytest.raises(RepartitionError, match="have not caught up"):
        await again.consume_all()


async def a_group_reading_the_whole_category_goes_on_in_partitions(
    world: World,
) -> None:
    await world.publish(3)
    whole = await world.consumer("a", [CategoryIdentifier("orders")], batch_size=70)
    (state,) = whole._sources.values()
    assert await whole._take_turn(state, [])  # one batch: part of the category
    await whole.release_claims()
    await world.publish(1)

    partitioned = await world.consumer("b", partitions_of("orders", 4))
    await partitioned.consume_all()

    world.check_exactly_once_in_order()
    # The whole category cannot be claimed again: it was retired.
    again = await world.consumer("c", [CategoryIdentifier("orders")])
    await again.consume_all()
    assert again.claimed_sources == ()


SCENARIOS = [
    a_group_reading_the_whole_category_goes_on_in_partitions,
    doubling_then_halving_applies_each_event_once_in_order,
    a_repartition_waits_for_the_former_partitions_to_be_released,
    a_stale_holder_cannot_commit_after_the_repartition,
    repartitioning_again_before_catching_up_is_refused,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_in_memory(scenario: Scenario) -> None:
    await scenario(World(InMemoryEventStorageAdapter(), InMemoryCheckpointStore(), []))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_on_postgres(scenario: Scenario, postgres_pool: Pool) -> None:
    await scenario(
        World(
            PostgresEventStorageAdapter(connection_source=postgres_pool),
            PostgresCheckpointStore(postgres_pool),
            [],
        )
    )


async def _expire(world: World, lease: timedelta) -> None:
    await asyncio.sleep(lease.total_seconds() * 2)
