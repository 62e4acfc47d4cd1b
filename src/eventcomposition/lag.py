"""Consumer lag: how far each held source's checkpoint is behind its head.

A node's operators read its holdings through ``HoldingsProvider``: per held
(subscriber group, source), the checkpoint (the sequence number of the last event
processed, ``None`` before the first) and the head of the source (the greatest
sequence number in it, ``None`` while it is empty).

``LagReader`` puts one together from three parts, so that it works with any kind of
consumer and checkpoint store:

- ``held``: which sources the node holds now (a consumer knows its allocation);
- ``checkpoints``: their checkpoints, read at once for all of them;
- ``heads``: a ``HeadReader``. ``PostgresHeadReader`` reads every head in one query
  (one index probe per source), so a scrape costs the same whatever the backlog;
  ``InMemoryHeadReader`` reads the in-memory store's indexes in place;
  ``EventStoreHeadReader`` asks any storage adapter, one source at a time.

Lag is counted in sequence numbers, which are global to the log (as Marten's
high-water mark is): with several categories interleaved it is an upper bound on the
events behind, and it is 0 exactly when the checkpoint is at the head.
"""

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from logicblocks.event.store import EventStorageAdapter, InMemoryEventStorageAdapter
from logicblocks.event.types import (
    CategoryIdentifier,
    EventSourceIdentifier,
    LogIdentifier,
    StoredEvent,
    StreamIdentifier,
)
from psycopg import sql
from psycopg_pool import AsyncConnectionPool


@dataclass(frozen=True)
class HeldSource:
    """A source held by one of the node's subscriber groups."""

    group: str
    source: EventSourceIdentifier


@dataclass(frozen=True)
class SourceLag:
    """A held source with its checkpoint and head (sequence numbers)."""

    group: str
    source: EventSourceIdentifier
    checkpoint: int | None
    head: int | None

    @property
    def lag(self) -> int:
        """Sequence numbers between the checkpoint and the head; 0 when caught up.

        Before the first checkpoint, everything up to the head counts (sequence
        numbers start at 0 in memory and 1 on PostgreSQL: at most one too many).
        """
        if self.head is None:
            return 0
        if self.checkpoint is None:
            return self.head + 1
        return max(self.head - self.checkpoint, 0)


class HoldingsProvider(Protocol):
    """What the node's HTTP server reads its holdings and their lag through."""

    async def holdings(self) -> Sequence[SourceLag]: ...


class HeadReader(Protocol):
    """The head (greatest sequence number) of each source; ``None`` when empty."""

    async def heads(
        self, sources: Sequence[EventSourceIdentifier]
    ) -> Mapping[EventSourceIdentifier, int | None]: ...


type HeldSources = Callable[[], Iterable[HeldSource]]
type CheckpointReader = Callable[
    [Sequence[HeldSource]], Awaitable[Mapping[HeldSource, int | None]]
]


class HoldsSources(Protocol):
    """What holds sources: a node's runtime (``EventRuntime.held_sources``)."""

    def held_sources(self) -> Sequence[tuple[str, EventSourceIdentifier]]: ...


def held_sources_of(holder: HoldsSources) -> HeldSources:
    """The ``held`` part of a ``LagReader``: what ``holder`` holds at each read."""

    def held() -> list[HeldSource]:
        return [HeldSource(group, source) for group, source in holder.held_sources()]

    return held


class NoHoldings:
    """The holdings of a node that holds nothing (a coordinator, say)."""

    async def holdings(self) -> Sequence[SourceLag]:
        return ()


class LagReader:
    """Holdings from who holds what, their checkpoints and the sources' heads."""

    def __init__(
        self, *, held: HeldSources, checkpoints: CheckpointReader, heads: HeadReader
    ) -> None:
        self._held = held
        self._checkpoints = checkpoints
        self._heads = heads

    async def holdings(self) -> Sequence[SourceLag]:
        held = list(dict.fromkeys(self._held()))
        if not held:
            return ()
        checkpoints = await self._checkpoints(held)
        heads = await self._heads.heads(list(dict.fromkeys(h.source for h in held)))
        return [
            SourceLag(
                group=holding.group,
                source=holding.source,
                checkpoint=checkpoints.get(holding),
                head=heads.get(holding.source),
            )
            for holding in held
        ]


class EventStoreHeadReader:
    """Heads read through a storage adapter's ``latest``, one source at a time.

    Log, category and stream sources have heads; other sources (partitions) read as
    ``None``.
    """

    def __init__(self, adapter: EventStorageAdapter) -> None:
        self._adapter = adapter

    async def heads(
        self, sources: Sequence[EventSourceIdentifier]
    ) -> Mapping[EventSourceIdentifier, int | None]:
        heads: dict[EventSourceIdentifier, int | None] = {}
        for source in sources:
            heads[source] = None
            if isinstance(
                source, LogIdentifier | CategoryIdentifier | StreamIdentifier
            ):
                latest = await self._adapter.latest(target=source)
                heads[source] = latest.sequence_number if latest is not None else None
        return heads


class InMemoryHeadReader:
    """Heads of the in-memory store's sources, without copying the store.

    logicblocks' in-memory adapter copies its indexes on every read (``latest``
    included), so ``EventStoreHeadReader`` costs time in proportion to the events
    stored, per source. This reads the last entry of each index of the live store
    instead: the adapter's private ``_db`` is read here only (pinned by a test).
    """

    def __init__(self, adapter: InMemoryEventStorageAdapter) -> None:
        self._events: Any = adapter._db

    async def heads(
        self, sources: Sequence[EventSourceIdentifier]
    ) -> Mapping[EventSourceIdentifier, int | None]:
        heads: dict[EventSourceIdentifier, int | None] = {}
        for source in sources:
            heads[source] = None
            if isinstance(
                source, LogIdentifier | CategoryIdentifier | StreamIdentifier
            ):
                latest: StoredEvent | None = self._events.last_event(source)
                heads[source] = latest.sequence_number if latest is not None else None
        return heads


class PostgresHeadReader:
    """Every source's head in one query on the events table.

    Each head is one backward probe of an index the schema creates: the sequence
    number index for the log, (category, sequence_number) for a category,
    (category, stream, sequence_number) for a stream.
    """

    def __init__(
        self, connection_pool: AsyncConnectionPool, *, table: str = "events"
    ) -> None:
        self._pool = connection_pool
        self._query = _heads_query(table)

    async def heads(
        self, sources: Sequence[EventSourceIdentifier]
    ) -> Mapping[EventSourceIdentifier, int | None]:
        categories = [s.category for s in sources if isinstance(s, CategoryIdentifier)]
        streams = [s for s in sources if isinstance(s, StreamIdentifier)]
        wants_log = any(isinstance(s, LogIdentifier) for s in sources)
        heads: dict[EventSourceIdentifier, int | None] = dict.fromkeys(sources)
        if not (categories or streams or wants_log):
            return heads
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                self._query,
                {
                    "categories": categories,
                    "stream_categories": [s.category for s in streams],
                    "streams": [s.stream for s in streams],
                    "log": wants_log,
                },
            )
            rows = await cursor.fetchall()
        for kind, category, stream, head in rows:
            match kind:
                case "log":
                    heads[LogIdentifier()] = head
                case "category":
                    heads[CategoryIdentifier(category=category)] = head
                case "stream":
                    heads[StreamIdentifier(category=category, stream=stream)] = head
        return heads


def _heads_query(table: str) -> sql.Composed:
    # The correlated max() subqueries keep each head an index probe; a GROUP BY
    # over the table would read every event.
    return sql.SQL(
        """
        SELECT 'category', c.category, NULL::text,
               (SELECT max(e.sequence_number) FROM {table} e
                WHERE e.category = c.category)
        FROM unnest(%(categories)s::text[]) AS c(category)
        UNION ALL
        SELECT 'stream', s.category, s.stream,
               (SELECT max(e.sequence_number) FROM {table} e
                WHERE e.category = s.category AND e.stream = s.stream)
        FROM unnest(%(stream_categories)s::text[], %(streams)s::text[])
             AS s(category, stream)
        UNION ALL
        SELECT 'log', NULL::text, NULL::text,
               (SELECT max(e.sequence_number) FROM {table} e)
        WHERE %(log)s
        """
    ).format(table=sql.Identifier(table))
