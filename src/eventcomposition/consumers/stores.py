"""Where transactional consumers keep their state, and how they read events.

A ``CheckpointStore`` keeps, per subscriber group and source, the claim (who may
commit), the checkpoint (the sequence number of the last event applied) and the
events parked as dead letters. Everything that moves a checkpoint happens inside a
``transaction()`` and checks the claim there, so a processor's writes, the
checkpoint and the fence commit together or not at all.
"""

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence, Set
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from enum import Enum

from logicblocks.event.sources import constraints
from logicblocks.event.store import EventStore, InMemoryEventStorageAdapter
from logicblocks.event.types import (
    CategoryIdentifier,
    EventSourceIdentifier,
    StoredEvent,
    StreamIdentifier,
)

from ..errors import EventCompositionError
from .batch import Transaction
from .claims import Claim, ClaimRecord, DeadLetter, Holder, SourceRef, key_of
from .partitions import CategoryPartition, Floor
from .visibility import (
    Horizon,
    VisibilityHorizon,
    adapter_of,
    bounded,
    horizon_for_adapter,
)


class ParkedStreamsChangedError(EventCompositionError):
    """Events were to wait behind a stream's dead letters, but the stream has none
    any more (a retry applied them): read the parked streams again and retry."""

    def __init__(self, streams: Sequence[str]) -> None:
        self.streams = tuple(streams)
        super().__init__(
            f"streams {', '.join(self.streams)} have no dead letters any more"
        )


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

    async def refresh(self) -> None:
        """Learn which sequence numbers are final now, so that the reads that follow
        return every event committed before this call (once the numbers below it
        are final too). A consumer calls it once per poll round. Nothing by
        default."""
        return None

    async def held_back(
        self, positions: Mapping[EventSourceIdentifier, int | None]
    ) -> Set[EventSourceIdentifier]:
        """Those of these sources (with their checkpoints) that have committed
        events reads do not return yet, because an earlier sequence number is still
        in flight: their consumer should poll them again soon, as no notification
        will come. None by default."""
        return frozenset()

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
    """Reads through logicblocks' ``EventStore`` (any adapter).

    Gap-safe on the adapters this package knows (in memory, PostgreSQL): reads stop
    at the visibility horizon, taken by ``refresh`` or by the first read. Events
    come in sequence-number order (the in-memory adapter lists them in commit
    order, so its reads gather every event after ``after`` and sort them).
    """

    def __init__(
        self, event_store: EventStore, horizon: VisibilityHorizon | None = None
    ) -> None:
        self._event_store = event_store
        adapter = adapter_of(event_store)
        self._visibility = horizon or horizon_for_adapter(adapter)
        self._unordered = isinstance(adapter, InMemoryEventStorageAdapter)
        self._horizon: Horizon | None = None

    async def refresh(self) -> None:
        if self._visibility is not None:
            self._horizon = await self._visibility.current()

    async def read(
        self, source: EventSourceIdentifier, *, after: int | None, limit: int
    ) -> Sequence[StoredEvent]:
        if self._horizon is None:
            await self.refresh()
        horizon = self._horizon
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
                if self._unordered:
                    events.append(event)
                    continue
                if horizon is not None and event.sequence_number > horizon.safe:
                    break
                events.append(event)
                if len(events) >= limit:
                    break
        finally:
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()
        if self._unordered:
            return bounded(events, horizon)[:limit]
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


class Unchecked(Enum):
    """``advance`` without checking where the checkpoint was."""

    ANY = "any"


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

    @property
    def server_restarts(self) -> int:
        """How many times the store's server was seen to start again since the
        store was made (0 for a store that cannot tell, or never restarts).

        A server that acknowledges commits before they are durable can lose the
        last of them in a crash, and hand out sequence numbers again: consumers
        read their checkpoints again when this changes, and forget what they
        learnt of the log before."""
        return 0

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
        *,
        expected: int | Unchecked | None = Unchecked.ANY,
    ) -> None:
        """Move the checkpoint in ``transaction`` and renew the lease, if ``claim``
        still holds; else raise ``ClaimLostError`` (the transaction rolls back).

        With ``expected`` (the checkpoint the batch was read after; ``None``: no
        checkpoint yet), the move happens only from there; else it raises
        ``CheckpointMovedError``, so that a consumer never moves a checkpoint
        over events it did not apply."""
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

    @abstractmethod
    async def hold(
        self, transaction: Transaction, dead_letters: Sequence[DeadLetter]
    ) -> None:
        """Keep ``dead_letters`` (``waiting`` ones, of one group and source) in
        ``transaction``, which also moves the checkpoint past them.

        Raises ``ParkedStreamsChangedError`` (the transaction then rolls back)
        when one of their streams has no dead letter left: a retry applied them
        since, so these events must be applied instead. On PostgreSQL the
        streams' letters stay locked until the transaction ends, so a retry
        removing them waits for it (and then finds the new ones)."""
        raise NotImplementedError

    async def stream_dead_letters(
        self, group: str, source: str, stream: str
    ) -> Sequence[DeadLetter]:
        """The dead letters of one stream (``category/stream``) of ``source``, in
        sequence-number order."""
        letters = [
            letter
            for letter in await self.dead_letters(group)
            if letter.source == source and letter.stream == stream
        ]
        return sorted(letters, key=lambda letter: letter.sequence_number)

    async def parked_streams(self, group: str, source: str) -> set[str]:
        """The streams of ``source`` that have dead letters of ``group``: their
        later events wait behind them."""
        return {
            letter.stream
            for letter in await self.dead_letters(group)
            if letter.source == source and letter.stream
        }

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
