"""Gap-safe reading: which sequence numbers are final, so no reader skips an event.

A sequence number is taken when an event is inserted, not when it commits. Under
logicblocks' ``LOG`` serialisation guarantee one lock around every write makes
numbers commit in order; under ``CATEGORY`` or ``STREAM`` two writers can commit out
of order, and a reader that saw 101 before 100 committed would move its checkpoint
past 100 and never read it.

Readers therefore read only up to a *visibility horizon*: the greatest sequence
number at or below which every number taken is final (committed or rolled back).
Checkpoints stay plain sequence numbers.

- ``PostgresVisibilityHorizon`` samples, in one query, the greatest number the
  events table's sequence has handed out and then the transactions writing to the
  table (those holding its ``ROW EXCLUSIVE`` lock, which an ``INSERT`` takes before
  it numbers its rows and keeps until its transaction ends). A sample's number is
  final once none of the writers seen with it is still writing; with no writer, at
  once. Only writers to ``events`` hold the horizon back: a consumer's long batch
  transaction does not (unless it publishes events itself).
- ``InMemoryVisibilityHorizon`` waits for the in-memory adapter's writes in flight
  (each holds its write lock from taking its numbers until it commits).

Reads through a horizon also order events by sequence number, which the in-memory
adapter does not (it lists events in commit order).
"""

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import overload

from logicblocks.event.sources import constraints
from logicblocks.event.store import (
    EventStorageAdapter,
    EventStore,
    InMemoryEventStorageAdapter,
    PostgresEventStorageAdapter,
)
from logicblocks.event.store.adapters.base import Latestable, Saveable, Scannable
from logicblocks.event.store.conditions import NoCondition, WriteCondition
from logicblocks.event.store.types import StreamPublishDefinition
from logicblocks.event.types import (
    CategoryIdentifier,
    JsonPersistable,
    JsonValue,
    LogIdentifier,
    NewEvent,
    StoredEvent,
    StreamIdentifier,
    StringPersistable,
)

from ..connections import Pool, autocommitting

SAMPLE_FUNCTION = "eventcomposition_visibility_sample"
"""The schema's function returning (allocated, the transactions writing events)."""

_MAX_PENDING_SAMPLES = 64
_NO_CONDITION = NoCondition()
_LOG = LogIdentifier()


@dataclass(frozen=True)
class Horizon:
    """What a reader may read: every sequence number up to ``safe`` is final.

    ``allocated`` is the greatest number handed out when the horizon was taken; the
    numbers in between are still in flight (or were rolled back since).
    """

    safe: int
    allocated: int

    @property
    def complete(self) -> bool:
        """Whether nothing was in flight: the horizon is the head of the log."""
        return self.safe >= self.allocated


class VisibilityHorizon(ABC):
    """Where the horizon of one event store comes from, shared by its readers.

    ``current`` coalesces: concurrent callers share one sample, but a caller always
    gets a sample that began after it called, so that it sees every event committed
    before then (once final).
    """

    def __init__(self) -> None:
        self._lock: asyncio.Lock | None = None
        self._started = 0
        self._finished = 0
        self._latest: Horizon | None = None

    @property
    def latest(self) -> Horizon | None:
        """The last horizon taken, if any (may be stale; never unsafe)."""
        return self._latest

    async def current(self) -> Horizon:
        """A horizon sampled after this call began."""
        wanted = self._started + 1
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._finished >= wanted and self._latest is not None:
                return self._latest
            self._started += 1
            generation = self._started
            horizon = await self._sample()
            self._latest, self._finished = horizon, generation
            return horizon

    @abstractmethod
    async def _sample(self) -> Horizon:
        raise NotImplementedError


class PostgresVisibilityHorizon(VisibilityHorizon):
    """The horizon of the ``events`` table of ``pool``'s database.

    Each sample is one call of the schema's ``eventcomposition_visibility_sample()``
    (``eventcomposition.schema.migrate`` creates it). Samples whose transactions are
    still running wait in a short list and become final at a later sample.
    """

    def __init__(self, pool: Pool) -> None:
        super().__init__()
        self._pool = pool
        self._safe = 0
        self._pending: list[tuple[int, frozenset[str]]] = []
        self._server_started: object | None = None
        self._restarts = 0

    @property
    def restarts(self) -> int:
        """How many times the server was seen to have started again (a new
        ``pg_postmaster_start_time()``) since this horizon's first sample."""
        return self._restarts

    def observe_server(self, started: object) -> bool:
        """Take in the server's start time (``pg_postmaster_start_time()``);
        True when it changed: the server restarted, and the horizon is forgotten.

        A server that commits asynchronously (``synchronous_commit = off``) may
        lose, in a crash, the last transactions it acknowledged, and with them
        the WAL record of its sequence's last values: numbers already handed out
        (and read) are handed out again. What this horizon learnt before then
        says nothing about the numbers after, so it starts again from nothing."""
        if started is None or started == self._server_started:
            return False
        restarted = self._server_started is not None
        self._server_started = started
        if restarted:
            self._restarts += 1
            self._safe = 0
            self._pending = []
            self._latest = None
        return restarted

    async def _sample(self) -> Horizon:
        async with autocommitting(self._pool) as connection:
            cursor = await connection.execute(
                f"SELECT allocated, writing, pg_postmaster_start_time() "
                f"FROM {SAMPLE_FUNCTION}()"
            )
            row = await cursor.fetchone()
        if row is None:  # pragma: no cover - the function always returns a row
            raise AssertionError(f"{SAMPLE_FUNCTION}() returned no row")
        self.observe_server(row[2])
        return self.observe(int(row[0]), frozenset(row[1]))

    def observe(self, allocated: int, running: frozenset[str]) -> Horizon:
        """Take in a sample: ``allocated`` read first, then the transactions
        ``running`` that write events (any identity unique while they run)."""
        still_pending = []
        for number, was_running in self._pending:
            if was_running & running:
                still_pending.append((number, was_running))
            else:
                self._safe = max(self._safe, number)
        if not running:
            self._safe = max(self._safe, allocated)
        self._pending = [
            (number, was_running)
            for number, was_running in still_pending
            if number > self._safe
        ]
        if allocated > self._safe and running:
            if self._pending and self._pending[-1][0] == allocated:
                # The same number again: the transactions running now are enough.
                self._pending[-1] = (allocated, self._pending[-1][1] & running)
            elif len(self._pending) < _MAX_PENDING_SAMPLES:
                self._pending.append((allocated, running))
        return Horizon(safe=self._safe, allocated=max(allocated, self._safe))


class InMemoryVisibilityHorizon(VisibilityHorizon):
    """The horizon of logicblocks' in-memory adapter: waits for its writes in flight.

    The adapter takes a write's sequence numbers under its write lock(s) and commits
    before letting go, awaiting in between, so under the ``STREAM`` or ``CATEGORY``
    guarantee a later write can commit first. The numbers handed out are final once
    every lock held when they were counted has been let go. Reads the adapter's
    private ``_sequence`` and ``_locks`` (pinned by a test).
    """

    def __init__(self, adapter: InMemoryEventStorageAdapter) -> None:
        super().__init__()
        self._adapter = adapter

    async def _sample(self) -> Horizon:
        allocated = int(self._adapter._sequence._value) - 1
        held = [lock for lock in self._adapter._locks.values() if lock.locked()]
        for lock in held:
            async with lock:
                pass
        return Horizon(safe=allocated, allocated=allocated)


def horizon_for_adapter(adapter: EventStorageAdapter) -> VisibilityHorizon | None:
    """The horizon of a logicblocks storage adapter, when this package knows one."""
    match adapter:
        case InMemoryEventStorageAdapter():
            return InMemoryVisibilityHorizon(adapter)
        case PostgresEventStorageAdapter():
            return PostgresVisibilityHorizon(adapter.connection_pool)
    return None


def gap_safe(adapter: EventStorageAdapter) -> EventStorageAdapter:
    """``adapter`` with scans stopping at its visibility horizon, when this package
    knows its horizon (in memory, PostgreSQL); else ``adapter`` itself."""
    if isinstance(adapter, GapSafeStorageAdapter):
        return adapter
    horizon = horizon_for_adapter(adapter)
    return adapter if horizon is None else GapSafeStorageAdapter(adapter, horizon)


def adapter_of(event_store: EventStore) -> EventStorageAdapter:
    """The storage adapter of ``event_store`` (its private ``_adapter``, pinned by a
    test: the store exposes none)."""
    adapter: EventStorageAdapter = event_store._adapter
    return adapter


def bounded(
    events: Sequence[StoredEvent], horizon: Horizon | None
) -> list[StoredEvent]:
    """``events`` up to ``horizon`` (all without one), in sequence-number order."""
    limit = None if horizon is None else horizon.safe
    return sorted(
        (event for event in events if limit is None or event.sequence_number <= limit),
        key=lambda event: event.sequence_number,
    )


class GapSafeStorageAdapter(EventStorageAdapter):
    """A storage adapter whose scans stop at the visibility horizon.

    Give it to the broker's event source factory (``broker/builders.py`` does), so
    that logicblocks' per-event subscription consumers, which read their sources'
    ``iterate``, never skip an event committed late. Each scan takes a fresh horizon
    (one query); writes and ``latest`` go to ``inner`` unchanged.
    """

    def __init__(self, inner: EventStorageAdapter, horizon: VisibilityHorizon) -> None:
        self._inner = inner
        self._horizon = horizon

    @property
    def inner(self) -> EventStorageAdapter:
        return self._inner

    @property
    def horizon(self) -> VisibilityHorizon:
        return self._horizon

    @overload
    async def save[Name: StringPersistable, Payload: JsonPersistable](
        self,
        *,
        target: StreamIdentifier,
        events: Sequence[NewEvent[Name, Payload]],
        condition: WriteCondition = _NO_CONDITION,
    ) -> Sequence[StoredEvent[Name, Payload]]: ...

    @overload
    async def save[Name: StringPersistable, Payload: JsonPersistable](
        self,
        *,
        target: CategoryIdentifier,
        streams: Mapping[str, StreamPublishDefinition[Name, Payload]],
    ) -> Mapping[str, Sequence[StoredEvent[Name, Payload]]]: ...

    async def save[Name: StringPersistable, Payload: JsonPersistable](
        self,
        *,
        target: Saveable,
        events: Sequence[NewEvent[Name, Payload]] | None = None,
        condition: WriteCondition = _NO_CONDITION,
        streams: Mapping[str, StreamPublishDefinition[Name, Payload]] | None = None,
    ) -> (
        Sequence[StoredEvent[Name, Payload]]
        | Mapping[str, Sequence[StoredEvent[Name, Payload]]]
    ):
        match target:
            case StreamIdentifier():
                if events is None:
                    raise ValueError("a stream publish needs events=")
                return await self._inner.save(
                    target=target, events=events, condition=condition
                )
            case CategoryIdentifier():
                if streams is None:
                    raise ValueError("a category publish needs streams=")
                return await self._inner.save(target=target, streams=streams)
        raise ValueError(f"unsupported target type: {type(target).__name__}")

    async def latest(self, *, target: Latestable) -> StoredEvent[str, JsonValue] | None:
        return await self._inner.latest(target=target)

    async def scan(
        self,
        *,
        target: Scannable = _LOG,
        constraints: Set[constraints.QueryConstraint] = frozenset(),
    ) -> AsyncIterator[StoredEvent[str, JsonValue]]:
        horizon = await self._horizon.current()
        if isinstance(self._inner, InMemoryEventStorageAdapter):
            # Listed in commit order: gather, then sort (the copy costs as much).
            events = [
                event
                async for event in self._inner.scan(
                    target=target, constraints=constraints
                )
            ]
            for event in bounded(events, horizon):
                yield event
            return
        iterator = self._inner.scan(target=target, constraints=constraints)
        try:
            async for event in iterator:
                if event.sequence_number > horizon.safe:
                    return
                yield event
        finally:
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()
