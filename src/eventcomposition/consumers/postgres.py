"""Claims, checkpoints and dead letters in PostgreSQL, and a direct read of events.

The tables (``consumer_claims``, ``consumer_checkpoints``, ``consumer_dead_letters``)
are created by ``eventcomposition.schema.migrate``. Leases are measured with the
database's clock, so nodes need not agree on the time. The checkpoint write renews
the lease and checks the claim in one statement: it waits for, or fails against, a
concurrent claim of the source by another subscriber, so a stale subscriber's batch
rolls back.
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
from psycopg.rows import class_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from ..connections import autocommitting
from ..lag import PostgresHeadReader
from .batch import Transaction
from .claims import Claim, ClaimRecord, DeadLetter, Holder, claim_lost
from .decoding import fast_json_loads
from .stores import (
    CheckpointStore,
    EventReader,
    ParkedStreamsChangedError,
    check_readable,
)
from .visibility import Horizon, PostgresVisibilityHorizon

_CLAIM = """
INSERT INTO consumer_claims AS c
    ("group", source, holder_node, holder_subscriber, epoch, lease_expires_at,
     released, claimed_at)
VALUES (%(group)s, %(source)s, %(node)s, %(subscriber)s, 1, now() + %(lease)s,
        false, now())
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
RETURNING c."group", c.source, c.epoch
"""

_RELEASE = f"""
UPDATE consumer_claims SET released = true, lease_expires_at = now()
WHERE {_HELD}
"""

# The fence, the lease renewal and the checkpoint in one statement.
_ADVANCE = f"""
WITH fence AS (
    UPDATE consumer_claims SET lease_expires_at = now() + %(lease)s
    WHERE {_HELD}
    RETURNING 1
)
INSERT INTO consumer_checkpoints ("group", source, sequence_number, updated_at)
SELECT %(group)s, %(source)s, %(sequence_number)s, now() FROM fence
ON CONFLICT ("group", source) DO UPDATE SET
    sequence_number = excluded.sequence_number,
    updated_at = excluded.updated_at
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

_EVENT_COLUMNS = (
    "id, name, stream, category, position, sequence_number, payload, "
    "observed_at, occurred_at"
)


def event_filter(
    source: EventSourceIdentifier, *, after: int, upto: int | None
) -> tuple[str, dict[str, Any]]:
    """The WHERE condition (and its named parameters) selecting ``source``'s events
    with a sequence number above ``after`` and, unless ``upto`` is None, at most
    ``upto`` (the visibility horizon). Conditions of other kinds of source join here.
    """
    conditions = ["sequence_number > %(after)s"]
    parameters: dict[str, Any] = {"after": after}
    match source:
        case StreamIdentifier(category=category, stream=stream):
            conditions[:0] = ["category = %(category)s", "stream = %(stream)s"]
            parameters |= {"category": category, "stream": stream}
        case CategoryIdentifier(category=category):
            conditions[:0] = ["category = %(category)s"]
            parameters["category"] = category
        case _:
            check_readable(source)
            raise AssertionError("unreachable")
    if upto is not None:
        conditions.append("sequence_number <= %(upto)s")
        parameters["upto"] = upto
    return " AND ".join(conditions), parameters


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
    decoded with orjson (``fast_json_loads``), set on the reader's own cursors.

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
        condition, parameters = event_filter(
            source, after=-1 if after is None else after, upto=self._horizon.safe
        )
        query = (
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE {condition} "
            "ORDER BY sequence_number LIMIT %(limit)s"
        )
        async with (
            autocommitting(self._pool) as connection,
            connection.cursor(row_factory=class_row(StoredEvent)) as cursor,
        ):
            set_json_loads(fast_json_loads, cursor)
            await cursor.execute(query, parameters | {"limit": limit})
            return await cursor.fetchall()

    async def read_one(
        self, source: EventSourceIdentifier, sequence_number: int
    ) -> StoredEvent | None:
        # A parked event lies below its checkpoint, so below any horizon.
        condition, parameters = event_filter(
            source, after=sequence_number - 1, upto=sequence_number
        )
        async with (
            autocommitting(self._pool) as connection,
            connection.cursor(row_factory=class_row(StoredEvent)) as cursor,
        ):
            set_json_loads(fast_json_loads, cursor)
            await cursor.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE {condition}", parameters
            )
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
    ) -> None:
        cursor = await _connection_of(transaction).execute(
            _ADVANCE,
            {
                **_fence_parameters(claim),
                "lease": lease,
                "sequence_number": sequence_number,
            },
        )
        if cursor.rowcount != 1:
            raise claim_lost(claim)

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


def _fence_parameters(claim: Claim) -> dict[str, Any]:
    return {
        "group": claim.group,
        "source": claim.source,
        "node": claim.holder.node_id,
        "subscriber": claim.holder.subscriber_id,
        "epoch": claim.epoch,
    }
