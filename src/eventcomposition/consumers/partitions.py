"""Partitions of a category: one category's streams spread over N sources.

A consumer group that requests ``partitions_of("orders", 16)`` gets sixteen sources
instead of one, so the coordinator can spread one category over up to sixteen
observers. A stream belongs to exactly one partition, chosen by a stable hash of its
name (so each stream's events stay in order, on one observer at a time); writers
change nothing.

The hash is the first 32 bits of the MD5 digest of the stream name's UTF-8 bytes, as
an unsigned big-endian integer; the partition is that number modulo the count. It
is the same on every node, process and Python version (Python's ``hash()`` is
salted per process), and PostgreSQL computes the very same number from
``md5(stream)`` (``PARTITION_HASH_SQL``), so readers filter in the database.
Because the partition is a modulus, partition ``i`` of ``N`` is exactly partitions
``i`` and ``i + N`` of ``2N``: a split or a merge moves no stream between unrelated
partitions (``repartition_starts``).

A ``CategoryPartition`` is an ordinary ``EventSourceIdentifier``: it is allocated,
claimed, checkpointed, parked and shown under its ``source_key``,
``orders#3/16`` (category, index, count).
"""

import hashlib
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from logicblocks.event.sources import EventSource, constraints
from logicblocks.event.types import (
    CategoryIdentifier,
    EventSourceIdentifier,
    JsonValue,
    StoredEvent,
    default_serialisation_fallback,
)
from logicblocks.event.types.identifier import event_sequence_identifier

from ..errors import EventCompositionError

if TYPE_CHECKING:
    from logicblocks.event.store import EventStorageAdapter

DEFAULT_PARTITION_COUNT = 16
"""Partitions per category when a group declares none.

Sixteen spreads one category over up to sixteen observers, keeps two to four
observers within a partition of an even share (3 observers: 5, 5 and 6), and costs
an idle group sixteen index probes per poll; a count can be doubled or halved later.
"""

MAX_PARTITION_COUNT = 1024

PARTITION_HASH_SQL = "('x' || left(md5(stream), 8))::bit(32)::bigint"
"""The stream hash in SQL, over a row's ``stream`` column: equals ``stream_hash``."""

BUCKETS = 64
"""The events table indexes each category's rows by ``stream_hash % BUCKETS``
(``BUCKET_SQL``), in sequence-number order within a bucket. A partition of a count
dividing ``BUCKETS`` is a union of whole buckets, read by merging their index
ranges; of a multiple of it, a part of one bucket."""

BUCKET_SQL = f"mod({PARTITION_HASH_SQL}, {BUCKETS})"
"""The bucket of a row, exactly as the index expression in ``schema.sql`` says."""

_KEY = re.compile(r"^(?P<category>.+)#(?P<index>\d+)/(?P<count>\d+)$")
SERIALISED_TYPE = "category-hash-partition"


def stream_hash(stream: str) -> int:
    """The stable 32-bit hash of a stream name (see the module's docstring)."""
    return int.from_bytes(hashlib.md5(stream.encode("utf-8")).digest()[:4], "big")


def partition_of(stream: str, count: int) -> int:
    """The index of the partition (of ``count``) that holds ``stream``."""
    _check_count(count)
    return stream_hash(stream) % count


def _check_count(count: int) -> None:
    if not 1 <= count <= MAX_PARTITION_COUNT:
        raise ValueError(
            f"a partition count must be between 1 and {MAX_PARTITION_COUNT}, "
            f"got {count}"
        )


@dataclass(frozen=True)
class CategoryPartition(EventSourceIdentifier):
    """Partition ``index`` of ``count`` of ``category``: the streams whose hash
    modulo ``count`` is ``index``."""

    category: str
    index: int
    count: int

    def __post_init__(self) -> None:
        _check_count(self.count)
        if not 0 <= self.index < self.count:
            raise ValueError(
                f"partition index must be in 0..{self.count - 1}, got {self.index}"
            )
        if not self.category:
            raise ValueError("a partition needs a category name")

    def serialise(
        self,
        fallback: Callable[[object], JsonValue] = default_serialisation_fallback,
    ) -> JsonValue:
        return {
            "type": SERIALISED_TYPE,
            "category": self.category,
            "index": self.index,
            "count": self.count,
        }

    @property
    def key(self) -> str:
        """``category#index/count``, e.g. ``orders#3/16``."""
        return f"{self.category}#{self.index}/{self.count}"

    @property
    def buckets(self) -> tuple[int, ...] | None:
        """The index buckets this partition's streams fall in; ``None`` when the
        count neither divides nor is a multiple of ``BUCKETS`` (then every row of
        the category is hashed as it is read)."""
        if BUCKETS % self.count == 0:
            return tuple(range(self.index, BUCKETS, self.count))
        if self.count % BUCKETS == 0:
            return (self.index % BUCKETS,)
        return None

    def holds(self, stream: str) -> bool:
        """Whether ``stream`` of this partition's category belongs to it."""
        return stream_hash(stream) % self.count == self.index

    def __repr__(self) -> str:
        return (
            f"CategoryPartition(category='{self.category}',"
            f"index={self.index},count={self.count})"
        )


def partitions_of(
    category: str, count: int = DEFAULT_PARTITION_COUNT
) -> list[CategoryPartition]:
    """Every partition of ``category`` split ``count`` ways: what a group requests."""
    _check_count(count)
    return [CategoryPartition(category, index, count) for index in range(count)]


def partition_from_key(key: str) -> CategoryPartition | None:
    """The partition a ``source_key`` such as ``orders#3/16`` names, else None."""
    match = _KEY.match(key)
    if match is None:
        return None
    try:
        return CategoryPartition(
            match["category"], int(match["index"]), int(match["count"])
        )
    except ValueError:
        return None


def source_identifier(serialised: Any) -> EventSourceIdentifier:
    """An identifier back from its ``serialise()`` form: partitions, and what
    logicblocks' ``event_sequence_identifier`` knows (log, category, stream)."""
    if isinstance(serialised, Mapping) and serialised.get("type") == SERIALISED_TYPE:
        return CategoryPartition(
            category=str(serialised["category"]),
            index=int(serialised["index"]),
            count=int(serialised["count"]),
        )
    identifier: EventSourceIdentifier = event_sequence_identifier(serialised)
    return identifier


# -- repartitioning --------------------------------------------------------------


@dataclass(frozen=True)
class Floor:
    """Events of former partition ``index`` of ``count`` up to ``sequence_number``
    were applied before a repartition: a new partition skips them."""

    index: int
    count: int
    sequence_number: int

    def covers(self, stream: str, sequence_number: int) -> bool:
        return (
            sequence_number <= self.sequence_number
            and stream_hash(stream) % self.count == self.index
        )


@dataclass(frozen=True)
class PartitionStart:
    """Where a new partition starts after a repartition: its checkpoint, and the
    floors of the former partitions whose checkpoints were further on."""

    checkpoint: int | None
    floors: tuple[Floor, ...] = ()

    def skips(self, event: StoredEvent) -> bool:
        return any(f.covers(event.stream, event.sequence_number) for f in self.floors)


def repartition_starts(
    checkpoints: Mapping[int, int | None], old_count: int, new_count: int
) -> dict[int, PartitionStart]:
    """The start of every partition of ``new_count`` from the checkpoints of the
    partitions of ``old_count`` (by index; ``None`` or missing: nothing applied).

    Each new partition starts at the lowest checkpoint of the former partitions it
    takes streams from; a former partition further on becomes a floor, below which
    the new partition skips that former partition's events. A split (``new_count``
    a multiple of ``old_count``) takes each new partition from one former partition
    and needs no floor.
    """
    _check_count(old_count)
    _check_count(new_count)
    starts: dict[int, PartitionStart] = {}
    for new in range(new_count):
        # Former partitions sharing streams with the new one: i ≡ new (mod gcd).
        sources = [
            old
            for old in range(old_count)
            if (old - new) % _gcd(old_count, new_count) == 0
        ]
        positions = [checkpoints.get(old) for old in sources]
        start = (
            None if None in positions else min(p for p in positions if p is not None)
        )
        floors = tuple(
            Floor(old, old_count, position)
            for old, position in zip(sources, positions, strict=True)
            if position is not None and (start is None or position > start)
        )
        starts[new] = PartitionStart(start, floors)
    return starts


WHOLE_CATEGORY = 0
"""The recorded count of a group that read the category whole before partitioning
it: its one former source is the category (key ``orders``), as 1 partition."""


def former_keys(category: str, count: int) -> list[str]:
    """The keys of a category's sources at a recorded ``count``."""
    if count == WHOLE_CATEGORY:
        return [category]
    return [partition.key for partition in partitions_of(category, count)]


RETIRED_HOLDER = "(repartitioned)"
"""The holder of a former partition's claim after a repartition: nobody."""


class RepartitionError(EventCompositionError):
    """A category cannot be repartitioned yet."""


def check_caught_up(
    group: str,
    checkpoints: Mapping[str, int | None],
    floors: Mapping[str, Sequence[Floor]],
) -> None:
    """Refuse to repartition partitions that still skip events of an earlier
    repartition (their checkpoint is below one of their floors)."""
    behind = sorted(
        key
        for key, own in floors.items()
        if any(
            (checkpoint := checkpoints.get(key)) is None
            or floor.sequence_number > checkpoint
            for floor in own
        )
    )
    if behind:
        raise RepartitionError(
            f"group '{group}' cannot be repartitioned while {', '.join(behind)} "
            "have not caught up with the previous repartition: deploy the previous "
            "partition count until their lag is 0, then change it"
        )


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


# -- in memory (logicblocks' event source factory) --------------------------------


class PartitionEventSource(EventSource[CategoryPartition, StoredEvent]):
    """A partition read through a storage adapter: its category, filtered."""

    def __init__(self, adapter: "EventStorageAdapter", identifier: CategoryPartition):
        # Imported here: logicblocks' store package is heavy (its logging set-up
        # imports rich's tracebacks), and only this in-memory reader needs it, not
        # the partition identifiers that `cluster status` reads.
        from logicblocks.event.store import EventCategory

        self._identifier = identifier
        self._category = EventCategory(
            adapter, CategoryIdentifier(category=identifier.category)
        )

    @property
    def identifier(self) -> CategoryPartition:
        return self._identifier

    async def latest(self) -> StoredEvent | None:
        last = None
        async for event in self.iterate():
            last = event
        return last

    async def iterate(
        self, *, constraints: Set[constraints.QueryConstraint] = frozenset()
    ) -> AsyncIterator[StoredEvent]:
        async for event in self._category.iterate(constraints=constraints):
            if self._identifier.holds(event.stream):
                yield event


def construct_partition(
    identifier: CategoryPartition, adapter: "EventStorageAdapter"
) -> PartitionEventSource:
    """The constructor to register with logicblocks' ``EventStoreEventSourceFactory``
    (which maps identifier types to sources and knows log, category, stream only)."""
    return PartitionEventSource(adapter, identifier)


def partition_keys(partitions: Sequence[CategoryPartition]) -> list[str]:
    return [partition.key for partition in partitions]
