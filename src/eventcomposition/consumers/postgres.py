"""Claims, checkpoints and dead letters in PostgreSQL, and a direct read of events.

The tables (``consumer_claims``, ``consumer_checkpoints``, ``consumer_dead_letters``)
are created by ``eventcomposition.schema.migrate``. Leases are measured with the
database's clock, so nodes need not agree on the time. The checkpoint write renews
the lease and checks the claim in one statement: it waits for, or fails against, a
concurrent claim of the source by another subscriber, so a stale subscriber's batch
rolls back. A claim never waits for a holder's open batch: it takes nothing this
time and is tried again at the next poll.
"""

from collections.abc import AsyncIterator, Mapping, Sequence, Set
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

from logicblocks.event.store import EventStore
from logicblocks.event.types import (
    CategoryIdentifier,
    EventSourceIdentifier,
    StoredEvent,
    StreamIdentifier,
)
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ..connections import autocommitting
from ..lag import PostgresHeadReader
from .batch import Transaction
from .claims import (
    Claim,
    ClaimRecord,
    DeadLetter,
    Holder,
    checkpoint_moved,
    claim_lost,
)
from .decoding import EVENT_COLUMNS, stored_event_rows, use_fast_json
from .partitions import (
    BUCKET_SQL,
    BUCKETS,
    PARTITION_HASH_SQL,
    RETIRED_HOLDER,
    WHOLE_CATEGORY,
    CategoryPartition,
    Floor,
    check_caught_up,
    former_keys,
    repartition_starts,
)
from .stores import (
    CheckpointStore,
    EventReader,
    ParkedStreamsChangedError,
    Unchecked,
    check_readable,
)
from .visibility import Horizon, PostgresVisibilityHorizon

# A claim never waits on the claim row: when another transaction has it locked
# (a holder between its checkpoint statement and COMMIT, perhaps cut off from
# the server and idle in that transaction until the server ends it), the claim
# takes nothing this time and is tried again at the next poll.
_CLAIM = """
WITH present AS (
    SELECT 1 FROM consumer_claims
    WHERE "group" = %(group)s AND source = %(source)s
), unlocked AS (
    SELECT 1 FROM consumer_claims
    WHERE "group" = %(group)s AND source = %(source)s
    FOR UPDATE SKIP LOCKED
)
INSERT INTO consumer_claims AS c
    ("group", source, holder_node, holder_subscriber, epoch, lease_expires_at,
     released, claimed_at)
SELECT %(group)s, %(source)s, %(node)s, %(subscriber)s, 1, now() + %(lease)s,
       false, now()
WHERE EXISTS (SELECT 1 FROM unlocked) OR NOT EXISTS (SELECT 1 FROM present)
ON CONFLICT ("group", source) DO UPDATE SET
    holder_node = excluded.holder_node,
    holder_subscriber = excluded.holder_subscriber,
    epoch = c.epoch + 1,
    lease_expires_at = excluded.lease_expires_at,
    released = false,
    claimed_at = excluded.claimed_at
WHERE c.released
   OR c.lease_expires_at <= now()
   OR (c.holder_node = excluded.holder_node
       AND c.holder_subscriber = excluded.holder_subscriber)
RETURNING epoch
"""

_HELD = """
"group" = %(group)s AND source = %(source)s AND holder_node = %(node)s
AND holder_subscriber = %(subscriber)s AND epoch = %(epoch)s AND NOT released
"""

_RENEW = """
UPDATE consumer_claims AS c SET lease_expires_at = now() + %(lease)s
FROM unnest(%(groups)s::text[], %(sources)s::text[], %(epochs)s::bigint[])
    AS h("group", source, epoch)
WHERE c."group" = h."group" AND c.source = h.source AND c.epoch = h.epoch
  AND c.holder_node = %(node)s AND c.holder_subscriber = %(subscriber)s
  AND NOT c.released
RETURNING c."group", c.source, c.epoch, pg_postmaster_start_time()
"""

_RELEASE = f"""
UPDATE consumer_claims SET released = true, lease_expires_at = now()
WHERE {_HELD}
"""

# The fence, the lease renewal and the checkpoint in one statement. When
# %(checked)s, the checkpoint moves only from %(expected)s (NULL: none yet).
# Returns whether the claim held, and whether the checkpoint moved.
_ADVANCE = f"""
WITH fence AS (
    UPDATE consumer_claims SET lease_expires_at = now() + %(lease)s
    WHERE {_HELD}
    RETURNING 1
), moved AS (
    INSERT INTO consumer_checkpoints ("group", source, sequence_number, updated_at)
    SELECT %(group)s, %(source)s, %(sequence_number)s, now() FROM fence
    WHERE NOT %(checked)s OR %(expected)s::bigint IS NULL OR EXISTS (
        SELECT 1 FROM consumer_checkpoints
        WHERE "group" = %(group)s AND source = %(source)s
    )
    ON CONFLICT ("group", source) DO UPDATE SET
        sequence_number = excluded.sequence_number,
        updated_at = excluded.updated_at
    WHERE NOT %(checked)s
       OR consumer_checkpoints.sequence_number
          IS NOT DISTINCT FROM %(expected)s::bigint
    RETURNING 1
)
SELECT (SELECT count(*) FROM fence), (SELECT count(*) FROM moved),
    (SELECT sequence_number FROM consumer_checkpoints
     WHERE "group" = %(group)s AND source = %(source)s)
"""

_PARK = """
INSERT INTO consumer_dead_letters
    ("group", source, sequence_number, event_id, error, attempts, parked_at,
     stream, waiting)
VALUES (%(group)s, %(source)s, %(sequence_number)s, %(event_id)s, %(error)s,
        %(attempts)s, %(parked_at)s, %(stream)s, false)
ON CONFLICT ("group", source, sequence_number) DO UPDATE SET
    error = excluded.error, attempts = excluded.attempts,
    parked_at = excluded.parked_at, stream = excluded.stream, waiting = false
"""

# The parked streams' letters, locked so that a retry removing them waits for the
# transaction holding more of their events behind them.
_LOCK_PARKED_STREAMS = """
SELECT DISTINCT stream FROM (
    SELECT stream FROM consumer_dead_letters
    WHERE "group" = %(group)s AND source = %(source)s AND stream = ANY(%(streams)s)
    FOR SHARE
) AS parked
"""

_HOLD = """
INSERT INTO consumer_dead_letters
    ("group", source, sequence_number, event_id, error, attempts, parked_at,
     stream, waiting)
SELECT %(group)s, %(source)s, held.sequence_number, held.event_id, held.error, 0,
       %(parked_at)s, held.stream, true
FROM unnest(%(sequence_numbers)s::bigint[], %(event_ids)s::text[],
            %(errors)s::text[], %(streams)s::text[])
    AS held(sequence_number, event_id, error, stream)
ON CONFLICT ("group", source, sequence_number) DO NOTHING
"""

_DEAD_LETTER_COLUMNS = (
    '"group", source, sequence_number, event_id, error, attempts, parked_at, '
    "stream, waiting"
)

_RETIRED_UNTIL = "9999-12-31 00:00:00+00"

# At first use: the partitions' count, or, when the group has read the category
# whole so far, WHOLE_CATEGORY (the partitions then start from its checkpoint).
_PARTITIONING = f"""
INSERT INTO consumer_partitionings ("group", category, count, changed_at)
SELECT %(group)s, %(category)s,
       CASE WHEN EXISTS (
           SELECT FROM consumer_checkpoints
           WHERE "group" = %(group)s AND source = %(category)s
       ) THEN {WHOLE_CATEGORY} ELSE %(count)s END,
       now()
ON CONFLICT ("group", category) DO NOTHING
"""
_LOCK_PARTITIONING = """
SELECT count FROM consumer_partitionings
WHERE "group" = %(group)s AND category = %(category)s FOR UPDATE
"""
_FLOORS = """
SELECT source, former_index, former_count, sequence_number
FROM consumer_partition_floors WHERE "group" = %(group)s AND source = ANY(%(sources)s)
"""
_LOCK_FORMER_CLAIMS = """
SELECT source, NOT released AND lease_expires_at > now() FROM consumer_claims
WHERE "group" = %(group)s AND source = ANY(%(sources)s) FOR UPDATE
"""
_CHECKPOINTS = """
SELECT source, sequence_number FROM consumer_checkpoints
WHERE "group" = %(group)s AND source = ANY(%(sources)s)
"""
# Nobody may claim a former partition again, nor commit under an earlier claim.
_RETIRE = f"""
INSERT INTO consumer_claims AS c
    ("group", source, holder_node, holder_subscriber, epoch, lease_expires_at,
     released, claimed_at)
SELECT %(group)s, source, '{RETIRED_HOLDER}', '', 1, '{_RETIRED_UNTIL}', false, now()
FROM unnest(%(sources)s::text[]) AS s(source)
ON CONFLICT ("group", source) DO UPDATE SET
    holder_node = excluded.holder_node,
    holder_subscriber = excluded.holder_subscriber,
    epoch = c.epoch + 1,
    lease_expires_at = excluded.lease_expires_at,
    released = false,
    claimed_at = excluded.claimed_at
"""
# Claims left on the new partitions by an earlier generation: free, next epoch.
_FREE = """
UPDATE consumer_claims SET released = true, lease_expires_at = now(), epoch = epoch + 1
WHERE "group" = %(group)s AND source = ANY(%(sources)s)
"""
_START = """
INSERT INTO consumer_checkpoints ("group", source, sequence_number, updated_at)
SELECT %(group)s, source, sequence_number, now()
FROM unnest(%(sources)s::text[], %(positions)s::bigint[]) AS s(source, sequence_number)
"""
_SET_FLOORS = """
INSERT INTO consumer_partition_floors
    ("group", source, former_index, former_count, sequence_number)
SELECT %(group)s, * FROM unnest(
    %(sources)s::text[], %(indexes)s::int[], %(counts)s::int[], %(positions)s::bigint[]
)
"""

_EVENT_COLUMNS = ", ".join(EVENT_COLUMNS)
type Condition = tuple[str, tuple[object, ...]]
"""A WHERE fragment over ``events`` and its parameters."""


def source_conditions(source: EventSourceIdentifier) -> list[Condition]:
    """The rows of ``source`` in ``events``, as alternatives (their union): the one
    place that says which rows a source is. Each alternative is read in sequence
    number order from one index range.

    A partition whose count divides ``BUCKETS`` is the union of its buckets (the
    ``events_category_bucket_sequence_number_idx`` index); of a multiple of
    ``BUCKETS``, its rows within one bucket; of another count, the category's rows
    whose stream hash falls in it (hashed as they are read: slower).
    """
    match source:
        case StreamIdentifier(category=category, stream=stream):
            return [("category = %s AND stream = %s", (category, stream))]
        case CategoryIdentifier(category=category):
            return [("category = %s", (category,))]
        case CategoryPartition(category=category, index=index, count=count):
            return _partition_conditions(category, index, count)
    check_readable(source)
    raise AssertionError("unreachable")


def _partition_conditions(category: str, index: int, count: int) -> list[Condition]:
    hashed = f"mod({PARTITION_HASH_SQL}, %s) = %s"
    if count == 1:
        return [("category = %s", (category,))]
    if BUCKETS % count == 0:
        return [
            (f"category = %s AND {BUCKET_SQL} = %s", (category, bucket))
            for bucket in range(index, BUCKETS, count)
        ]
    if count % BUCKETS == 0:
        return [
            (
                f"category = %s AND {BUCKET_SQL} = %s AND {hashed}",
                (category, index % BUCKETS, count, index),
            )
        ]
    return [(f"category = %s AND {hashed}", (category, count, index))]


def read_query(
    source: EventSourceIdentifier,
    *,
    after: int,
    limit: int,
    also: Condition | None = None,
) -> tuple[str, tuple[object, ...]]:
    """The query of up to ``limit`` events of ``source`` after ``after``, oldest
    first (rows also meeting ``also``, when given): several alternatives are read
    each from its own index range and merged in order."""
    extra, extra_parameters = also if also is not None else ("", ())
    extra = f" AND ({extra})" if extra else ""
    branches = [
        (
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE {where}{extra} "
            "AND sequence_number > %s ORDER BY sequence_number LIMIT %s",
            (*parameters, *extra_parameters, after, limit),
        )
        for where, parameters in source_conditions(source)
    ]
    if len(branches) == 1:
        return branches[0]
    union = " UNION ALL ".join(f"({query})" for query, _ in branches)
    return (
        f"SELECT * FROM ({union}) AS merged ORDER BY sequence_number LIMIT %s",
        (*(p for _, parameters in branches for p in parameters), limit),
    )


type Pool = AsyncConnectionPool[AsyncConnection[Any]]


class PostgresTransaction(Transaction):
    def __init__(self, connection: AsyncConnection[Any]) -> None:
        super().__init__()
        self._connection = connection

    @property
    def connection(self) -> AsyncConnection[Any]:
        return self._connection


def _connection_of(transaction: Transaction) -> AsyncConnection[Any]:
    if not isinstance(transaction, PostgresTransaction):
        raise TypeError(
            "the PostgreSQL checkpoint store works with its own transactions only"
        )
    return transaction.connection


class PostgresEventReader(EventReader):
    """One indexed query per read on the ``events`` table of the pool's database:
    about twice as fast as iterating through logicblocks' adapter. Payloads are
    decoded with orjson (``use_fast_json``), set on the reader's own cursors,
    and rows made into events without ``StoredEvent.__init__``'s cost
    (``stored_event_rows``).

    Gap-safe: reads stop at the visibility horizon (see ``visibility``), taken by
    ``refresh`` (once per poll round; the first read takes one itself). Readers
    of one node share ``horizon``, so concurrent refreshes cost one query.
    """

    def __init__(
        self, pool: Pool, horizon: PostgresVisibilityHorizon | None = None
    ) -> None:
        self._pool = pool
        self._heads = PostgresHeadReader(pool)
        self._visibility = horizon or PostgresVisibilityHorizon(pool)
        self._horizon: Horizon | None = None

    @property
    def horizon(self) -> Horizon | None:
        """The horizon reads stop at now (None before the first)."""
        return self._horizon

    async def refresh(self) -> None:
        self._horizon = await self._visibility.current()

    async def heads(
        self, sources: Sequence[EventSourceIdentifier]
    ) -> Mapping[EventSourceIdentifier, int | None]:
        return await self._heads.heads(sources)

    async def held_back(
        self, positions: Mapping[EventSourceIdentifier, int | None]
    ) -> Set[EventSourceIdentifier]:
        horizon = self._horizon
        if horizon is None or horizon.complete or not positions:
            return frozenset()
        heads = await self._heads.heads(list(positions))
        waiting = set()
        for source, head in heads.items():
            position = positions.get(source)
            if head is None or head <= horizon.safe:
                continue
            if position is None or head > position:
                waiting.add(source)
        return waiting

    async def read(
        self, source: EventSourceIdentifier, *, after: int | None, limit: int
    ) -> Sequence[StoredEvent]:
        if self._horizon is None:
            await self.refresh()
        assert self._horizon is not None
        query, parameters = read_query(
            source,
            after=-1 if after is None else after,
            limit=limit,
            also=("sequence_number <= %s", (self._horizon.safe,)),
        )
        async with (
            autocommitting(self._pool) as connection,
            connection.cursor(row_factory=stored_event_rows) as cursor,
        ):
            use_fast_json(cursor)
            await cursor.execute(query, parameters)
            return await cursor.fetchall()

    async def read_one(
        self, source: EventSourceIdentifier, sequence_number: int
    ) -> StoredEvent | None:
        # A parked event lies below its checkpoint, so below any horizon.
        query, parameters = read_query(
            source,
            after=sequence_number - 1,
            limit=1,
            also=("sequence_number = %s", (sequence_number,)),
        )
        async with (
            autocommitting(self._pool) as connection,
            connection.cursor(row_factory=stored_event_rows) as cursor,
        ):
            use_fast_json(cursor)
            await cursor.execute(query, parameters)
            return await cursor.fetchone()


class PostgresCheckpointStore(CheckpointStore):
    """Claims, checkpoints and dead letters in the database of ``pool``.

    Consumers using it read events with one direct query on the same database's
    ``events`` table (``event_reader``), so the event store must live there too.
    """

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._horizon = PostgresVisibilityHorizon(pool)

    @property
    def pool(self) -> Pool:
        return self._pool

    @property
    def server_restarts(self) -> int:
        """How often the server was seen to start again (by the visibility
        horizon's samples and the lease renewals)."""
        return self._horizon.restarts

    async def _fetch(self, query: str, parameters: Mapping[str, Any]) -> list[Any]:
        async with autocommitting(self._pool) as connection:
            cursor = await connection.execute(query, parameters)
            return await cursor.fetchall() if cursor.description else []

    async def now(self) -> datetime:
        rows = await self._fetch("SELECT now()", {})
        value: datetime = rows[0][0]
        return value

    async def claim(
        self, group: str, source: str, holder: Holder, lease: timedelta
    ) -> Claim | None:
        rows = await self._fetch(
            _CLAIM,
            {
                "group": group,
                "source": source,
                "node": holder.node_id,
                "subscriber": holder.subscriber_id,
                "lease": lease,
            },
        )
        return Claim(group, source, holder, int(rows[0][0])) if rows else None

    async def renew(self, claims: Sequence[Claim], lease: timedelta) -> set[Claim]:
        held: set[Claim] = set()
        by_holder: dict[Holder, list[Claim]] = {}
        for claim in claims:
            by_holder.setdefault(claim.holder, []).append(claim)
        for holder, mine in by_holder.items():
            rows = await self._fetch(
                _RENEW,
                {
                    "lease": lease,
                    "groups": [claim.group for claim in mine],
                    "sources": [claim.source for claim in mine],
                    "epochs": [claim.epoch for claim in mine],
                    "node": holder.node_id,
                    "subscriber": holder.subscriber_id,
                },
            )
            if rows:
                self._horizon.observe_server(rows[0][3])
            renewed = {(row[0], row[1], int(row[2])) for row in rows}
            held.update(
                claim
                for claim in mine
                if (claim.group, claim.source, claim.epoch) in renewed
            )
        return held

    async def release(self, claim: Claim) -> None:
        await self._fetch(_RELEASE, _fence_parameters(claim))

    async def claims(self, group: str) -> Sequence[ClaimRecord]:
        rows = await self._fetch(
            "SELECT source, holder_node, holder_subscriber, epoch, lease_expires_at, "
            'released FROM consumer_claims WHERE "group" = %(group)s ORDER BY source',
            {"group": group},
        )
        return [
            ClaimRecord(
                group=group,
                source=source,
                holder=Holder(node, subscriber),
                epoch=int(epoch),
                lease_expires_at=expires,
                released=bool(released),
            )
            for source, node, subscriber, epoch, expires, released in rows
        ]

    async def positions(self, group: str) -> Mapping[str, int]:
        rows = await self._fetch(
            "SELECT source, sequence_number FROM consumer_checkpoints "
            'WHERE "group" = %(group)s',
            {"group": group},
        )
        return {source: int(position) for source, position in rows}

    async def position(self, group: str, source: str) -> int | None:
        rows = await self._fetch(
            "SELECT sequence_number FROM consumer_checkpoints "
            'WHERE "group" = %(group)s AND source = %(source)s',
            {"group": group, "source": source},
        )
        return int(rows[0][0]) if rows else None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._pool.connection() as connection:
            async with connection.transaction():
                transaction = PostgresTransaction(connection)
                yield transaction
            await transaction.run_commit_callbacks()

    async def advance(
        self,
        transaction: Transaction,
        claim: Claim,
        sequence_number: int,
        lease: timedelta,
        *,
        expected: int | Unchecked | None = Unchecked.ANY,
    ) -> None:
        checked = not isinstance(expected, Unchecked)
        expected_at = None if isinstance(expected, Unchecked) else expected
        cursor = await _connection_of(transaction).execute(
            _ADVANCE,
            {
                **_fence_parameters(claim),
                "lease": lease,
                "sequence_number": sequence_number,
                "checked": checked,
                "expected": expected_at,
            },
        )
        row = await cursor.fetchone()
        held, moved, found = row if row is not None else (0, 0, None)
        if not held:
            raise claim_lost(claim)
        if not moved:
            # The statement's snapshot predates its own write: ``found`` is the
            # checkpoint it found, not the one it would have written.
            raise checkpoint_moved(claim, expected_at, found)

    async def park(
        self,
        transaction: Transaction,
        claim: Claim,
        dead_letter: DeadLetter,
        lease: timedelta,
    ) -> None:
        await _connection_of(transaction).execute(
            _PARK,
            {
                "group": dead_letter.group,
                "source": dead_letter.source,
                "sequence_number": dead_letter.sequence_number,
                "event_id": dead_letter.event_id,
                "error": dead_letter.error,
                "attempts": dead_letter.attempts,
                "parked_at": dead_letter.parked_at,
                "stream": dead_letter.stream,
            },
        )
        await self.advance(transaction, claim, dead_letter.sequence_number, lease)

    async def hold(
        self, transaction: Transaction, dead_letters: Sequence[DeadLetter]
    ) -> None:
        if not dead_letters:
            return
        connection = _connection_of(transaction)
        first = dead_letters[0]
        streams = sorted({letter.stream for letter in dead_letters})
        cursor = await connection.execute(
            _LOCK_PARKED_STREAMS,
            {"group": first.group, "source": first.source, "streams": streams},
        )
        parked = {row[0] for row in await cursor.fetchall()}
        gone = [stream for stream in streams if stream not in parked]
        if gone:
            raise ParkedStreamsChangedError(gone)
        await connection.execute(
            _HOLD,
            {
                "group": first.group,
                "source": first.source,
                "parked_at": first.parked_at,
                "sequence_numbers": [d.sequence_number for d in dead_letters],
                "event_ids": [d.event_id for d in dead_letters],
                "errors": [d.error for d in dead_letters],
                "streams": [d.stream for d in dead_letters],
            },
        )

    async def stream_dead_letters(
        self, group: str, source: str, stream: str
    ) -> Sequence[DeadLetter]:
        rows = await self._fetch(
            f"SELECT {_DEAD_LETTER_COLUMNS} FROM consumer_dead_letters "
            'WHERE "group" = %(group)s AND source = %(source)s '
            "AND stream = %(stream)s ORDER BY sequence_number",
            {"group": group, "source": source, "stream": stream},
        )
        return [_dead_letter(*row) for row in rows]

    async def parked_streams(self, group: str, source: str) -> set[str]:
        rows = await self._fetch(
            "SELECT DISTINCT stream FROM consumer_dead_letters "
            "WHERE \"group\" = %(group)s AND source = %(source)s AND stream <> ''",
            {"group": group, "source": source},
        )
        return {row[0] for row in rows}

    async def prepare_partition(
        self, group: str, partition: CategoryPartition
    ) -> tuple[Floor, ...] | None:
        names = {"group": group, "category": partition.category}
        async with self._pool.connection() as connection, connection.transaction():
            await connection.execute(_PARTITIONING, {**names, "count": partition.count})
            rows = await (
                await connection.execute(_LOCK_PARTITIONING, names)
            ).fetchall()
            count = int(rows[0][0])
            if count != partition.count:
                formers = former_keys(partition.category, count)
                if not await _retire(connection, group, formers):
                    return None
                await _start(connection, group, partition, formers)
            floors = await _floors_of(connection, group, [partition.key])
        return floors.get(partition.key, ())

    async def dead_letters(self, group: str | None = None) -> Sequence[DeadLetter]:
        rows = await self._fetch(
            f"SELECT {_DEAD_LETTER_COLUMNS} FROM consumer_dead_letters "
            'WHERE %(group)s::text IS NULL OR "group" = %(group)s '
            "ORDER BY parked_at, sequence_number",
            {"group": group},
        )
        return [_dead_letter(*row) for row in rows]

    async def remove_dead_letter(
        self, transaction: Transaction, dead_letter: DeadLetter
    ) -> bool:
        cursor = await _connection_of(transaction).execute(
            'DELETE FROM consumer_dead_letters WHERE "group" = %(group)s '
            "AND source = %(source)s AND sequence_number = %(sequence_number)s",
            {
                "group": dead_letter.group,
                "source": dead_letter.source,
                "sequence_number": dead_letter.sequence_number,
            },
        )
        return cursor.rowcount == 1

    def event_reader(self, event_store: EventStore) -> EventReader:
        return PostgresEventReader(self._pool, self._horizon)


def _dead_letter(
    group: str,
    source: str,
    sequence_number: int,
    event_id: str,
    error: str,
    attempts: int,
    parked_at: datetime,
    stream: str,
    waiting: bool,
) -> DeadLetter:
    return DeadLetter(
        group=group,
        source=source,
        sequence_number=int(sequence_number),
        event_id=event_id,
        error=error,
        attempts=int(attempts),
        parked_at=parked_at,
        stream=stream,
        waiting=bool(waiting),
    )


async def _floors_of(
    connection: AsyncConnection[Any], group: str, sources: Sequence[str]
) -> dict[str, tuple[Floor, ...]]:
    rows = await (
        await connection.execute(_FLOORS, {"group": group, "sources": list(sources)})
    ).fetchall()
    floors: dict[str, list[Floor]] = {}
    for source, index, count, position in rows:
        floors.setdefault(source, []).append(Floor(index, count, position))
    return {source: tuple(own) for source, own in floors.items()}


async def _retire(
    connection: AsyncConnection[Any], group: str, formers: Sequence[str]
) -> bool:
    """Retire the former partitions' claims, unless one is still held."""
    parameters = {"group": group, "sources": list(formers)}
    held = await (await connection.execute(_LOCK_FORMER_CLAIMS, parameters)).fetchall()
    if any(still_held for _, still_held in held):
        return False
    await connection.execute(_RETIRE, parameters)
    return True


async def _start(
    connection: AsyncConnection[Any],
    group: str,
    partition: CategoryPartition,
    formers: Sequence[str],
) -> None:
    """The new partitions' checkpoints and floors from the former ones', and the
    new count."""
    rows = await (
        await connection.execute(_CHECKPOINTS, {"group": group, "sources": formers})
    ).fetchall()
    checkpoints: dict[str, int | None] = {key: None for key in formers}
    checkpoints.update({source: int(position) for source, position in rows})
    check_caught_up(group, checkpoints, await _floors_of(connection, group, formers))
    starts = repartition_starts(
        {index: checkpoints[key] for index, key in enumerate(formers)},
        len(formers),
        partition.count,
    )
    keys = {
        index: CategoryPartition(partition.category, index, partition.count).key
        for index in starts
    }
    everything = {"group": group, "sources": [*keys.values(), *formers]}
    new = {"group": group, "sources": list(keys.values())}
    await connection.execute(_FREE, new)
    await connection.execute(
        'DELETE FROM consumer_checkpoints WHERE "group" = %(group)s '
        "AND source = ANY(%(sources)s)",
        new,
    )
    await connection.execute(
        'DELETE FROM consumer_partition_floors WHERE "group" = %(group)s '
        "AND source = ANY(%(sources)s)",
        everything,
    )
    begun = [
        (keys[i], s.checkpoint) for i, s in starts.items() if s.checkpoint is not None
    ]
    await connection.execute(
        _START,
        {
            "group": group,
            "sources": [key for key, _ in begun],
            "positions": [position for _, position in begun],
        },
    )
    floors = [(keys[i], floor) for i, s in starts.items() for floor in s.floors]
    await connection.execute(
        _SET_FLOORS,
        {
            "group": group,
            "sources": [key for key, _ in floors],
            "indexes": [floor.index for _, floor in floors],
            "counts": [floor.count for _, floor in floors],
            "positions": [floor.sequence_number for _, floor in floors],
        },
    )
    await connection.execute(
        "UPDATE consumer_partitionings SET count = %(count)s, changed_at = now() "
        'WHERE "group" = %(group)s AND category = %(category)s',
        {"group": group, "category": partition.category, "count": partition.count},
    )


def _fence_parameters(claim: Claim) -> dict[str, Any]:
    return {
        "group": claim.group,
        "source": claim.source,
        "node": claim.holder.node_id,
        "subscriber": claim.holder.subscriber_id,
        "epoch": claim.epoch,
    }
