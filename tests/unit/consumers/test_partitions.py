"""Partitions: the stable stream hash, identifiers and keys, repartition starts, and
the allocation of partitions among subscribers."""

import random
from collections.abc import Sequence

import pytest
from logicblocks.event.store import EventStore, InMemoryEventStorageAdapter
from logicblocks.event.types import (
    CategoryIdentifier,
    LogIdentifier,
    NewEvent,
    StoredEvent,
    StreamIdentifier,
)

from eventcomposition.broker.allocation import (
    GroupState,
    SubscriberRequest,
    balanced,
)
from eventcomposition.broker.stores import event_source_factory
from eventcomposition.consumers import (
    BatchProcessor,
    InMemoryCheckpointStore,
    Transaction,
    make_transactional_consumer,
    source_key,
    source_of,
)
from eventcomposition.consumers.partitions import (
    DEFAULT_PARTITION_COUNT,
    CategoryPartition,
    Floor,
    PartitionStart,
    partition_from_key,
    partition_of,
    partitions_of,
    repartition_starts,
    source_identifier,
    stream_hash,
)
from eventcomposition.metrics import source_label

STREAMS = [f"customer-{n:05d}" for n in range(2000)]


def test_the_stream_hash_is_pinned() -> None:
    # The first four bytes of md5 as big-endian: md5("") = d41d8cd9...,
    # md5("a") = 0cc175b9..., md5("b") = 92eb5ffe...: never Python's hash().
    assert stream_hash("") == 0xD41D8CD9
    assert stream_hash("a") == 0x0CC175B9
    assert stream_hash("b") == 0x92EB5FFE
    assert stream_hash("customer-0001") == 754682334


def test_pinned_partitions_of_sample_streams() -> None:
    assert {
        stream: partition_of(stream, 16)
        for stream in ("customer-0000", "customer-0001", "customer-0002", "a", "b")
    } == {
        "customer-0000": 13,
        "customer-0001": 14,
        "customer-0002": 11,
        "a": 9,
        "b": 14,
    }
    assert partition_of("customer-0001", 1) == 0
    assert partition_of("customer-0001", 64) == 754682334 % 64


@pytest.mark.parametrize("count", range(1, 65))
def test_every_stream_is_in_exactly_one_partition(count: int) -> None:
    partitions = partitions_of("orders", count)
    for stream in STREAMS[:300]:
        holders = [p.index for p in partitions if p.holds(stream)]
        assert holders == [partition_of(stream, count)]


def test_a_split_keeps_each_stream_within_its_former_partition() -> None:
    for stream in STREAMS:
        for count in (1, 2, 4, 8, 16, 32):
            assert partition_of(stream, 2 * count) % count == partition_of(
                stream, count
            )


def test_partitions_spread_streams_evenly() -> None:
    counts = [0] * DEFAULT_PARTITION_COUNT
    for stream in STREAMS:
        counts[partition_of(stream, DEFAULT_PARTITION_COUNT)] += 1
    expected = len(STREAMS) / DEFAULT_PARTITION_COUNT
    assert all(0.7 * expected <= n <= 1.3 * expected for n in counts), counts


def test_identifier_key_serialisation_and_label() -> None:
    partition = CategoryPartition("orders", 3, 16)
    assert source_key(partition) == "orders#3/16"
    assert source_of("orders#3/16") == partition
    assert partition_from_key("orders") is None
    assert partition_from_key("orders#16/16") is None
    assert source_of("orders/customer-1") == StreamIdentifier("orders", "customer-1")
    assert source_identifier(partition.serialise()) == partition
    for other in (
        CategoryIdentifier("orders"),
        StreamIdentifier("orders", "s"),
        LogIdentifier(),
    ):
        assert source_identifier(other.serialise()) == other
    assert source_label(partition) == "partition:orders#3/16"
    assert len({partition, CategoryPartition("orders", 3, 16)}) == 1
    assert partition != CategoryPartition("orders", 3, 32)


@pytest.mark.parametrize(
    ("index", "count"), [(0, 0), (-1, 4), (4, 4), (0, 2000)], ids=str
)
def test_bad_partitions_are_refused(index: int, count: int) -> None:
    with pytest.raises(ValueError, match="partition"):
        CategoryPartition("orders", index, count)


def test_a_split_starts_both_halves_at_the_former_checkpoint() -> None:
    starts = repartition_starts({0: 10, 1: None, 2: 30, 3: 40}, 4, 8)
    assert starts == {
        0: PartitionStart(10),
        1: PartitionStart(None),
        2: PartitionStart(30),
        3: PartitionStart(40),
        4: PartitionStart(10),
        5: PartitionStart(None),
        6: PartitionStart(30),
        7: PartitionStart(40),
    }


def test_a_merge_starts_at_the_lower_checkpoint_with_a_floor_for_the_higher() -> None:
    starts = repartition_starts({0: 10, 1: 20, 2: 30, 3: None}, 4, 2)
    assert starts == {
        0: PartitionStart(10, (Floor(2, 4, 30),)),
        1: PartitionStart(None, (Floor(1, 4, 20),)),
    }


@pytest.mark.parametrize(
    ("old", "new"), [(16, 32), (32, 16), (4, 1), (1, 4), (3, 4), (16, 8), (6, 4)]
)
def test_after_a_repartition_every_event_is_applied_exactly_once(
    old: int, new: int
) -> None:
    rng = random.Random(old * 100 + new)
    log = [(sequence, rng.choice(STREAMS[:200])) for sequence in range(1, 3001)]
    # Each former partition applied its events up to some checkpoint (or none).
    checkpoints: dict[int, int | None] = {
        index: rng.choice([None, *range(0, 3001, 97)]) for index in range(old)
    }
    applied = [
        (sequence, stream)
        for sequence, stream in log
        if (checkpoint := checkpoints[partition_of(stream, old)]) is not None
        and sequence <= checkpoint
    ]
    for index, start in repartition_starts(checkpoints, old, new).items():
        for sequence, stream in log:
            if partition_of(stream, new) != index:
                continue
            if start.checkpoint is not None and sequence <= start.checkpoint:
                continue
            if any(floor.covers(stream, sequence) for floor in start.floors):
                continue
            applied.append((sequence, stream))
    assert sorted(applied) == log


def test_partitions_are_shared_five_or_six_among_three_subscribers() -> None:
    partitions = tuple(partitions_of("orders", 16))
    subscribers = [SubscriberRequest(f"s{n}", partitions) for n in range(3)]
    plan = balanced(GroupState("g", subscribers), move_budget=100)
    assert sorted(len(held) for held in plan.holdings.values()) == [5, 5, 6]
    held = [source for sources in plan.holdings.values() for source in sources]
    assert sorted(held, key=repr) == sorted(partitions, key=repr)


def test_a_joining_subscriber_takes_partitions_from_the_most_loaded() -> None:
    partitions = tuple(partitions_of("orders", 16))
    holdings = {"s0": partitions[:10], "s1": partitions[10:]}
    subscribers = [SubscriberRequest(f"s{n}", partitions) for n in range(3)]
    plan = balanced(GroupState("g", subscribers, holdings), move_budget=100)
    # Revoke before assign: the most loaded keeps the ceil (6), the other 5; the
    # five taken wait for their release before s2 gets them.
    assert set(plan.holdings["s0"]) <= set(partitions[:10])
    assert set(plan.holdings["s1"]) <= set(partitions[10:])
    assert [len(plan.holdings[s]) for s in ("s0", "s1", "s2")] == [6, 5, 0]
    assert len(plan.moving) == 5
    settled = balanced(GroupState("g", subscribers, plan.holdings), move_budget=100)
    assert [len(settled.holdings[s]) for s in ("s0", "s1", "s2")] == [6, 5, 5]
    assert settled.moves == 0


def test_the_settings_know_the_partition_counts() -> None:
    # eventcomposition.settings keeps its own copies (importing this module would
    # import logicblocks' event store into the settings).
    from eventcomposition.consumers import partitions
    from eventcomposition.settings import models

    assert models.DEFAULT_PARTITION_COUNT == partitions.DEFAULT_PARTITION_COUNT
    assert models.MAX_PARTITION_COUNT == partitions.MAX_PARTITION_COUNT


async def test_a_notification_for_a_category_consumes_its_partitions() -> None:
    adapter = InMemoryEventStorageAdapter()
    store = EventStore(adapter=adapter)
    for stream in STREAMS[:20]:
        await store.stream(category="orders", stream=stream).publish(
            events=[NewEvent(name="placed", payload={})]
        )
    await store.stream(category="payments", stream="p").publish(
        events=[NewEvent(name="paid", payload={})]
    )
    applied: list[str] = []

    class Recording(BatchProcessor):
        async def process_batch(
            self, events: Sequence[StoredEvent], transaction: Transaction
        ) -> None:
            names = [e.category for e in events]
            transaction.on_commit(lambda: applied.extend(names))

    sources = [*partitions_of("orders", 4), CategoryIdentifier("payments")]
    consumer = make_transactional_consumer(
        event_store=store,
        checkpoint_store=InMemoryCheckpointStore(),
        subscriber_group="g",
        subscription_requests=sources,
        processor=Recording(),
    )
    factory = event_source_factory(adapter)
    for source in sources:
        await consumer.accept(factory.construct(source))

    await consumer.consume_categories(frozenset({"orders"}))

    assert applied == ["orders"] * 20
    assert set(consumer.claimed_sources) == set(partitions_of("orders", 4))
