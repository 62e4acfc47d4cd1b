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

What is not known stays unknown: a checkpoint reader leaves out a source whose
position it cannot tell, and a head reader a source whose head it cannot read (a
kind of source it does not know). Such a holding has no lag (``lag`` is ``None``),
and the node shows none for it rather than a made-up 0.

Lag is counted in sequence numbers, which are global to the log (as Marten's
high-water mark is): with several categories interleaved it is an upper bound on the
events behind, and it is 0 exactly when the checkpoint is at the head.
"""

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from logicblocks.event.types import (
    CategoryIdentifier,
    EventSourceIdentifier,
    LogIdentifier,
    StoredEvent,
    StreamIdentifier,
)
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from .connections import autocommitting

if TYPE_CHECKING:
    from logicblocks.event.store import (
        EventStorageAdapter,
        InMemoryEventStorageAdapter,
    )

    from .consumers.partitions import CategoryPartition

# The partitions module is imported where it is used: the consumers package, which
# defines it, imports this module. logicblocks' store package is heavy (its logging
# set-up imports rich's tracebacks) and only named in annotations here, so that
# `cluster status` reads lag without it.


@dataclass(frozen=True)
class HeldSource:
    """A source held by one of the node's subscriber groups."""

    group: str
    source: EventSourceIdentifier


@dataclass(frozen=True)
class SourceLag:
    """A held source with its checkpoint and head (sequence numbers).

    ``checkpoint`` is ``None`` before the first checkpoint, ``head`` while the
    source is empty; ``checkpoint_known``/``head_known`` are False when they could
    not be told at all.
    """

    group: str
    source: EventSourceIdentifier
    checkpoint: int | None
    head: int | None
    checkpoint_known: bool = True
    head_known: bool = True

    @property
    def known(self) -> bool:
        """Whether both the checkpoint and the head are known, and so the lag."""
        return self.checkpoint_known and self.head_known

    @property
    def lag(self) -> int | None:
        """Sequence numbers between the checkpoint and the head; 0 when caught up;
        ``None`` when not known.

        Before the first checkpoint, everything up to the head counts (sequence
        numbers start at 0 in memory and 1 on PostgreSQL: at most one too many).
        """
        if not self.known:
            return None
        if self.head is None:
            return 0
        if self.checkpoint is None:
            return self.head + 1
        return max(self.head - self.checkpoint, 0)


class HoldingsProvider(Protocol):
    """What the node's HTTP server reads its holdings and their lag through."""

    async def holdings(self) -> Sequence[SourceLag]: ...


class HeadReader(Protocol):
    """The head (greatest sequence number) of each source; ``None`` when empty.

    A source whose head the reader cannot tell is left out of the mapping.
    """

    async def heads(
        self, sources: Sequence[EventSourceIdentifier]
    ) -> Mapping[EventSourceIdentifier, int | None]: ...


type HeldSources = Callable[[], Iterable[HeldSource]]
type CheckpointReader = Callable[
    [Sequence[HeldSource]], Awaitable[Mapping[HeldSource, int | None]]
]
"""Checkpoints of held sources (``None``: none yet); a source whose checkpoint
the reader cannot tell is left out."""


class HoldsSources(Protocol):
    """What holds sources: a node's runtime (``EventRuntime.held_sources``)."""

    def held_sources(self) -> Sequence[tuple[str, EventSourceIdentifier]]: ...


@runtime_checkable
class SavesPositions(Protocol):
    """A consumer that keeps its sources' positions itself (a per-event
    subscription consumer, in logicblocks' consumer state store) and reads them.

    ``saved_positions`` leaves out the sources whose position it cannot tell.
    """

    @property
    def group(self) -> str: ...

    async def saved_positions(
        self, sources: Sequence[EventSourceIdentifier]
    ) -> Mapping[EventSourceIdentifier, int | None]: ...


class HasPositionSavers(Protocol):
    """What knows the consumers that save their own positions: a node's runtime
    (``EventRuntime.position_savers``)."""

    def position_savers(self) -> Sequence[SavesPositions]: ...


def checkpoints_of(
    holder: HasPositionSavers, checkpoints: CheckpointReader
) -> CheckpointReader:
    """The ``checkpoints`` part of a ``LagReader`` for every kind of consumer.

    A group whose consumer saves its own positions (``SavesPositions``) reads them
    from it; every other group's are read by ``checkpoints`` (the transactional
    consumers' checkpoint store).
    """

    async def read(held: Sequence[HeldSource]) -> Mapping[HeldSource, int | None]:
        savers = {saver.group: saver for saver in holder.position_savers()}
        positions: dict[HeldSource, int | None] = {}
        rest = [holding for holding in held if holding.group not in savers]
        if rest:
            positions.update(await checkpoints(rest))
        for group, saver in savers.items():
            mine = [holding for holding in held if holding.group == group]
            if not mine:
                continue
            saved = await saver.saved_positions([h.source for h in mine])
            for holding in mine:
                if holding.source in saved:
                    positions[holding] = saved[holding.source]
        return positions

    return read


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
                checkpoint_known=holding in checkpoints,
                head_known=holding.source in heads,
            )
            for holding in held
        ]


class EventStoreHeadReader:
    """Heads read through a storage adapter's ``latest``, one source at a time.

    Log, category, stream and partition sources have heads (a partition's found by
    reading its category); other sources are left out (unknown).
    """

    def __init__(self, adapter: "EventStorageAdapter") -> None:
        self._adapter = adapter

    async def heads(
        self, sources: Sequence[EventSourceIdentifier]
    ) -> Mapping[EventSourceIdentifier, int | None]:
        from .consumers.partitions import CategoryPartition

        heads: dict[EventSourceIdentifier, int | None] = {}
        for source in sources:
            if isinstance(
                source, LogIdentifier | CategoryIdentifier | StreamIdentifier
            ):
                latest = await self._adapter.latest(target=source)
                heads[source] = latest.sequence_number if latest is not None else None
            elif isinstance(source, CategoryPartition):
                heads[source] = None
                async for event in self._adapter.scan(
                    target=CategoryIdentifier(category=source.category)
                ):
                    if source.holds(event.stream):
                        heads[source] = event.sequence_number
        return heads


class InMemoryHeadReader:
    """Heads of the in-memory store's sources, without copying the store.

    logicblocks' in-memory adapter copies its indexes on every read (``latest``
    included), so ``EventStoreHeadReader`` costs time in proportion to the events
    stored, per source. This reads the last entry of each index of the live store
    instead: the adapter's private ``_db`` is read here only (pinned by a test).
    """

    def __init__(self, adapter: "InMemoryEventStorageAdapter") -> None:
        self._events: Any = adapter._db

    async def heads(
        self, sources: Sequence[EventSourceIdentifier]
    ) -> Mapping[EventSourceIdentifier, int | None]:
        from .consumers.partitions import CategoryPartition

        heads: dict[EventSourceIdentifier, int | None] = {}
        for source in sources:
            if isinstance(
                source, LogIdentifier | CategoryIdentifier | StreamIdentifier
            ):
                latest: StoredEvent | None = self._events.last_event(source)
                heads[source] = latest.sequence_number if latest is not None else None
            elif isinstance(source, CategoryPartition):
                heads[source] = self._partition_head(source)
        return heads

    def _partition_head(self, partition: "CategoryPartition") -> int | None:
        index = self._events._select_index(
            CategoryIdentifier(category=partition.category)
        )
        for sequence_number in reversed(index):
            event: StoredEvent = self._events._events[sequence_number]
            if partition.holds(event.stream):
                return event.sequence_number
        return None


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
        from .consumers.partitions import CategoryPartition

        categories = [s.category for s in sources if isinstance(s, CategoryIdentifier)]
        streams = [s for s in sources if isinstance(s, StreamIdentifier)]
        partitions = [s for s in sources if isinstance(s, CategoryPartition)]
        bucketed = [(p, b) for p in partitions for b in p.buckets or ()]
        others = [p for p in partitions if p.buckets is None]
        wants_log = any(isinstance(s, LogIdentifier) for s in sources)
        # Only the kinds this query reads; others stay unknown (left out).
        heads: dict[EventSourceIdentifier, int | None] = {
            source: None
            for source in sources
            if isinstance(
                source,
                LogIdentifier
                | CategoryIdentifier
                | StreamIdentifier
                | CategoryPartition,
            )
        }
        if not (categories or streams or partitions or wants_log):
            return heads
        # One statement: in autocommit, without BEGIN and COMMIT around it.
        async with autocommitting(self._pool) as connection:
            cursor = await connection.execute(
                self._query,
                {
                    "categories": categories,
                    "stream_categories": [s.category for s in streams],
                    "streams": [s.stream for s in streams],
                    "partition_categories": [p.category for p, _ in bucketed],
                    "partition_buckets": [bucket for _, bucket in bucketed],
                    "partition_indexes": [p.index for p, _ in bucketed],
                    "partition_counts": [p.count for p, _ in bucketed],
                    "other_categories": [p.category for p in others],
                    "other_indexes": [p.index for p in others],
                    "other_counts": [p.count for p in others],
                    "log": wants_log,
                },
            )
            rows = await cursor.fetchall()
        for kind, category, stream, index, count, head in rows:
            match kind:
                case "partition" | "unbucketed":
                    partition = CategoryPartition(category, index, count)
                    latest = heads.get(partition)
                    if head is not None and (latest is None or head > latest):
                        heads[partition] = head
                case "log":
                    heads[LogIdentifier()] = head
                case "category":
                    heads[CategoryIdentifier(category=category)] = head
                case "stream":
                    heads[StreamIdentifier(category=category, stream=stream)] = head
        return heads


def _heads_query(table: str) -> sql.Composed:
    # The correlated max() subqueries keep each head an index probe; a GROUP BY
    # over the table would read every event. A partition's head is the greatest of
    # its buckets' heads (the bucket index), or, for a count that is no divisor or
    # multiple of BUCKETS, a backward scan of its category's rows.
    from .consumers.partitions import BUCKET_SQL, BUCKETS, PARTITION_HASH_SQL

    return sql.SQL(
        """
        SELECT 'category', c.category, NULL::text, NULL::int, NULL::int,
               (SELECT max(e.sequence_number) FROM {table} e
                WHERE e.category = c.category)
        FROM unnest(%(categories)s::text[]) AS c(category)
        UNION ALL
        SELECT 'stream', s.category, s.stream, NULL::int, NULL::int,
               (SELECT max(e.sequence_number) FROM {table} e
                WHERE e.category = s.category AND e.stream = s.stream)
        FROM unnest(%(stream_categories)s::text[], %(streams)s::text[])
             AS s(category, stream)
        UNION ALL
        SELECT 'partition', p.category, NULL::text, p.index, p.count,
               (SELECT max(e.sequence_number) FROM {table} e
                WHERE e.category = p.category
                  AND {bucket} = p.bucket
                  AND (p.count <= {buckets} OR mod({hash}, p.count) = p.index))
        FROM unnest(%(partition_categories)s::text[], %(partition_buckets)s::int[],
                    %(partition_indexes)s::int[], %(partition_counts)s::int[])
             AS p(category, bucket, index, count)
        UNION ALL
        SELECT 'unbucketed', p.category, NULL::text, p.index, p.count,
               (SELECT max(e.sequence_number) FROM {table} e
                WHERE e.category = p.category
                  AND mod({hash}, p.count) = p.index)
        FROM unnest(%(other_categories)s::text[], %(other_indexes)s::int[],
                    %(other_counts)s::int[]) AS p(category, index, count)
        UNION ALL
        SELECT 'log', NULL::text, NULL::text, NULL::int, NULL::int,
               (SELECT max(e.sequence_number) FROM {table} e)
        WHERE %(log)s
        """
    ).format(
        table=sql.Identifier(table),
        hash=sql.SQL(PARTITION_HASH_SQL.replace("stream", "e.stream")),
        bucket=sql.SQL(BUCKET_SQL.replace("stream", "e.stream")),
        buckets=sql.Literal(BUCKETS),
    )


@dataclass(frozen=True)
class SourceSpan:
    """The events of ``source`` after sequence number ``after`` (``None``: from the
    start) up to ``upto`` included: what a consumer processed between two
    checkpoints."""

    source: EventSourceIdentifier
    after: int | None
    upto: int


class PostgresEventCounter:
    """How many events each span holds, every span counted in one query.

    Each count walks the part of the index that ``PostgresHeadReader`` probes, so it
    costs as many index entries as the span has events (a partition's: its buckets'
    ranges). Other kinds of source count as ``None``: not known here.
    """

    def __init__(
        self, connection_pool: AsyncConnectionPool, *, table: str = "events"
    ) -> None:
        self._pool = connection_pool
        self._query = _counts_query(table)

    async def counts(self, spans: Sequence[SourceSpan]) -> list[int | None]:
        """The number of events in each span, in the order given."""
        from .consumers.partitions import CategoryPartition

        counts: list[int | None] = [None] * len(spans)
        columns: dict[str, list[Any]] = {
            name: []
            for name in (
                "index",
                "kind",
                "category",
                "stream",
                "bucket",
                "pindex",
                "pcount",
                "after",
                "upto",
            )
        }
        for index, span in enumerate(spans):
            # (kind, category, stream, bucket): one row per range to count.
            ranges: list[tuple[str, str, str, int]]
            pindex = pcount = 0
            match span.source:
                case LogIdentifier():
                    ranges = [("log", "", "", 0)]
                case CategoryIdentifier(category=category):
                    ranges = [("category", category, "", 0)]
                case StreamIdentifier(category=category, stream=stream):
                    ranges = [("stream", category, stream, 0)]
                case CategoryPartition(category=category, index=pindex, count=pcount):
                    buckets = span.source.buckets
                    ranges = (
                        [("hashed", category, "", 0)]
                        if buckets is None
                        else [("bucket", category, "", b) for b in buckets]
                    )
                case _:
                    continue
            if span.after is not None and span.after >= span.upto:
                counts[index] = 0
                continue
            counts[index] = 0
            for kind, category, stream, bucket in ranges:
                for name, value in (
                    ("index", index),
                    ("kind", kind),
                    ("category", category),
                    ("stream", stream),
                    ("bucket", bucket),
                    ("pindex", pindex),
                    ("pcount", pcount),
                    ("after", -1 if span.after is None else span.after),
                    ("upto", span.upto),
                ):
                    columns[name].append(value)
        if not columns["index"]:
            return counts
        async with self._pool.connection() as connection:
            cursor = await connection.execute(self._query, columns)
            rows = await cursor.fetchall()
        for index, count in rows:
            counts[index] = (counts[index] or 0) + count
        return counts


def _counts_query(table: str) -> sql.Composed:
    from .consumers.partitions import BUCKET_SQL, BUCKETS, PARTITION_HASH_SQL

    # One branch per kind of source, so that each count is a range scan of the
    # index that kind has (a single OR'ed condition would plan as a scan of the
    # whole log's range).
    return sql.SQL(
        """
        WITH spans AS (
            SELECT * FROM unnest(
                %(index)s::int[], %(kind)s::text[], %(category)s::text[],
                %(stream)s::text[], %(bucket)s::int[], %(pindex)s::int[],
                %(pcount)s::int[], %(after)s::bigint[], %(upto)s::bigint[]
            ) AS s(index, kind, category, stream, bucket, pindex, pcount, after, upto)
        )
        SELECT s.index,
               (SELECT count(*) FROM {table} e
                WHERE e.category = s.category
                  AND e.sequence_number > s.after AND e.sequence_number <= s.upto)
        FROM spans s WHERE s.kind = 'category'
        UNION ALL
        SELECT s.index,
               (SELECT count(*) FROM {table} e
                WHERE e.category = s.category AND e.stream = s.stream
                  AND e.sequence_number > s.after AND e.sequence_number <= s.upto)
        FROM spans s WHERE s.kind = 'stream'
        UNION ALL
        SELECT s.index,
               (SELECT count(*) FROM {table} e
                WHERE e.sequence_number > s.after AND e.sequence_number <= s.upto)
        FROM spans s WHERE s.kind = 'log'
        UNION ALL
        SELECT s.index,
               (SELECT count(*) FROM {table} e
                WHERE e.category = s.category AND {bucket} = s.bucket
                  AND (s.pcount <= {buckets} OR mod({hash}, s.pcount) = s.pindex)
                  AND e.sequence_number > s.after AND e.sequence_number <= s.upto)
        FROM spans s WHERE s.kind = 'bucket'
        UNION ALL
        SELECT s.index,
               (SELECT count(*) FROM {table} e
                WHERE e.category = s.category AND mod({hash}, s.pcount) = s.pindex
                  AND e.sequence_number > s.after AND e.sequence_number <= s.upto)
        FROM spans s WHERE s.kind = 'hashed'
        """
    ).format(
        table=sql.Identifier(table),
        hash=sql.SQL(PARTITION_HASH_SQL.replace("stream", "e.stream")),
        bucket=sql.SQL(BUCKET_SQL.replace("stream", "e.stream")),
        buckets=sql.Literal(BUCKETS),
    )
