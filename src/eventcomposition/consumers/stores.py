"""Where transactional consumers keep their state, and how they read events.

A ``CheckpointStore`` keeps, per subscriber group and source, the claim (who may
commit), the checkpoint (the sequence number of the last event applied) and the
events parked as dead letters. Everything that moves a checkpoint happens inside a
``transaction()`` and checks the claim there, so a processor's writes, the
checkpoint and the fence commit together or not at all.
"""

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta

from logicblocks.event.sources import constraints
from logicblocks.event.store import EventStore
from logicblocks.event.types import (
    CategoryIdentifier,
    EventSourceIdentifier,
    StoredEvent,
    StreamIdentifier,
)

from .batch import Transaction
from .claims import Claim, ClaimRecord, DeadLetter, Holder, SourceRef, key_of
from .partitions import CategoryPartition, Floor


class EventReader(ABC):
    """Reads a source's events in sequence-number order."""

    @abstractmethod
    async def read(
        self, source: EventSourceIdentifier, *, after: int | None, limit: int
    ) -> Sequence[StoredEvent]:
        """Up to ``limit`` events with a sequence number above ``after`` (all when
        ``after`` is None), oldest first."""
        raise NotImplementedError

    async def heads(
        self, sources: Sequence[EventSourceIdentifier]
    ) -> Mapping[EventSourceIdentifier, int | None] | None:
        """The greatest sequence number of each source (``None`` when empty), read
        at once, so that idle sources cost one query together; ``None`` when this
        reader cannot tell (then every source is read)."""
        return None

    async def read_one(
        self, source: EventSourceIdentifier, sequence_number: int
    ) -> StoredEvent | None:
        events = await self.read(source, after=sequence_number - 1, limit=1)
        if events and events[0].sequence_number == sequence_number:
            return events[0]
        return None


def check_readable(source: EventSourceIdentifier) -> None:
    if not isinstance(
        source, CategoryIdentifier | StreamIdentifier | CategoryPartition
    ):
        raise ValueError(
            f"a transactional consumer reads categories, streams or partitions, not "
            f"{type(source).__name__}: request a CategoryIdentifier, a "
            "StreamIdentifier or partitions_of(category, count)"
        )


class StoreEventReader(EventReader):
    """Reads through logicblocks' ``EventStore`` (any adapter)."""

    def __init__(self, event_store: EventStore) -> None:
        self._event_store = event_store

    async def read(
        self, source: EventSourceIdentifier, *, after: int | None, limit: int
    ) -> Sequence[StoredEvent]:
        wanted = (
            frozenset()
            if after is None
            else frozenset(
                {constraints.SequenceNumberAfterConstraint(sequence_number=after)}
            )
        )
        iterator = self._iterate(source, wanted)
        partition = source if isinstance(source, CategoryPartition) else None
        events: list[StoredEvent] = []
        try:
            async for event in iterator:
                if partition is not None and not partition.holds(event.stream):
                    continue
                events.append(event)
                if len(events) >= limit:
                    break
        finally:
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()
        return events

    def _iterate(
        self,
        source: EventSourceIdentifier,
        wanted: frozenset[constraints.QueryConstraint],
    ) -> AsyncIterator[StoredEvent]:
        match source:
            case StreamIdentifier(category=category, stream=stream):
                return self._event_store.stream(
                    category=category, stream=stream
                ).iterate(constraints=wanted)
            case (
                CategoryIdentifier(category=category)
                | CategoryPartition(category=category)
            ):
                return self._event_store.category(category=category).iterate(
                    constraints=wanted
                )
        check_readable(source)
        raise AssertionError("unreachable")


class CheckpointStore(ABC):
    """Claims, checkpoints and dead letters of transactional consumers."""

    # -- claims ------------------------------------------------------------------

    @abstractmethod
    async def claim(
        self, group: str, source: str, holder: Holder, lease: timedelta
    ) -> Claim | None:
        """Claim ``source`` for ``holder`` with the next epoch, if it is free:
        never claimed, released, its lease expired, or held by ``holder`` itself.
        None when someone else holds it."""
        raise NotImplementedError

    @abstractmethod
    async def renew(self, claims: Sequence[Claim], lease: timedelta) -> set[Claim]:
        """Extend the leases of ``claims``; returns those still held."""
        raise NotImplementedError

    @abstractmethod
    async def release(self, claim: Claim) -> None:
        """Give ``claim`` up (if still held), so another subscriber may claim at once."""
        raise NotImplementedError

    # -- reading, for other components -----------------------------------------

    @abstractmethod
    async def claims(self, group: str) -> Sequence[ClaimRecord]:
        """Every claim ever made for ``group``'s sources, held or not."""
        raise NotImplementedError

    @abstractmethod
    async def now(self) -> datetime:
        """The clock leases are measured against."""
        raise NotImplementedError

    async def is_released(self, group: str, source: SourceRef) -> bool:
        """Whether no subscriber holds ``source`` of ``group`` any more: never
        claimed, released, or its lease expired. A hand-over may start then."""
        key = key_of(source)
        now = await self.now()
        for record in await self.claims(group):
            if record.source == key:
                return record.is_free(now)
        return True

    @abstractmethod
    async def positions(self, group: str) -> Mapping[str, int]:
        """Each source's checkpoint (the last sequence number applied), by key."""
        raise NotImplementedError

    @abstractmethod
    async def position(self, group: str, source: str) -> int | None:
        raise NotImplementedError

    # -- work --------------------------------------------------------------------

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A transaction: commits when the block ends, rolls back when it raises."""
        raise NotImplementedError

    @abstractmethod
    async def advance(
        self,
        transaction: Transaction,
        claim: Claim,
        sequence_number: int,
        lease: timedelta,
    ) -> None:
        """Move the checkpoint in ``transaction`` and renew the lease, if ``claim``
        still holds; else raise ``ClaimLostError`` (the transaction rolls back)."""
        raise NotImplementedError

    @abstractmethod
    async def park(
        self,
        transaction: Transaction,
        claim: Claim,
        dead_letter: DeadLetter,
        lease: timedelta,
    ) -> None:
        """Keep ``dead_letter`` and move the checkpoint past it, fenced as ``advance``."""
        raise NotImplementedError

    # -- partitions ----------------------------------------------------------------

    @abstractmethod
    async def prepare_partition(
        self, group: str, partition: CategoryPartition
    ) -> tuple[Floor, ...] | None:
        """Make sure ``group`` reads ``partition``'s category in
        ``partition.count`` partitions, before the partition is claimed.

        The first partition claimed records its count. A partition of another
        count than the recorded one repartitions the category, once no subscriber
        holds any former partition: in one transaction the former partitions'
        claims are retired (no one can claim them or commit for them again), the
        new partitions' checkpoints and floors are written from the former
        checkpoints (``repartition_starts``) and the count changes. Returns the
        partition's floors (events it must skip) when its count is the group's, or
        ``None`` while former partitions are still held (try again later).
        """
        raise NotImplementedError

    # -- dead letters ------------------------------------------------------------

    @abstractmethod
    async def dead_letters(self, group: str | None = None) -> Sequence[DeadLetter]:
        """Parked events, of one group or all, oldest first."""
        raise NotImplementedError

    @abstractmethod
    async def remove_dead_letter(
        self, transaction: Transaction, dead_letter: DeadLetter
    ) -> bool:
        """Remove it in ``transaction``; False when it was gone already."""
        raise NotImplementedError

    def event_reader(self, event_store: EventStore) -> EventReader:
        """How consumers using this store read events (through the store by default)."""
        return StoreEventReader(event_store)
