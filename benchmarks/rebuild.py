"""11. Rebuilding a projection: events/s against a raw read, and live latency meanwhile.

N events over 4 categories are stored (set-up, with one INSERT ... SELECT). A
versioned projection (``eventcomposition.projections``) of plain inserts, one row
per event, is live at version 1 and caught up (its checkpoints are set at the
heads: its own table's content does not matter here). One consumer (one observer,
in this process) runs it; ``ProjectionCatalog.request_rebuild`` starts version 2,
which the consumer builds from the first event with batches of
``REBUILD_BATCH_SIZE``, its four sources at once, writing each batch with one
``INSERT ... SELECT FROM unnest(arrays)`` (the application's bulk path while
``transaction.rebuilding``; COPY with psycopg's ``write_row`` measured slower, as it
formats each row in Python), and swaps in once caught up. Meanwhile one event every
20 ms goes to the live version: its latency is the time from the event's
``occurred_at`` to the commit of the batch that applied it (publishing included;
the consumer polls every 20 ms, as with notifications off).

The clock runs from the request to the swap. The bound: the rate at which the same
N events are read with one plain query (``SELECT * ... WHERE category = ANY(...)
ORDER BY sequence_number``, every row fetched into Python), right before, in the
same run. Publisher, live consumer and rebuild share this process's event loop.
"""

import asyncio
import contextlib
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.types import CategoryIdentifier, NewEvent, StoredEvent
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.consumers import (
    BatchProcessor,
    PostgresCheckpointStore,
    Transaction,
)
from eventcomposition.projections import (
    ProjectionCatalog,
    VersionedProjection,
    VersionState,
    make_versioned_consumer,
)
from eventcomposition.schema import Migration
from eventcomposition.testing import ConnectionInfo, drop_database

from .common import BenchContext, Json, PostgresUnavailable, Spread, say, table

NAME = "rebuild"
GROUP = "rebuild-bench"
CATEGORIES = [f"bench-{n}" for n in range(4)]
LIVE_CATEGORY = CATEGORIES[0]
REBUILD_BATCH_SIZE = 5000
LIVE_INTERVAL = 0.02
RAW_QUERY = "SELECT * FROM events WHERE category = ANY(%s) ORDER BY sequence_number"
ROWS = Migration(
    "rows", "CREATE TABLE rows (seq bigint NOT NULL, category text NOT NULL)"
)
STORE_EVENTS = """
INSERT INTO events (id, name, stream, category, position, payload, observed_at,
                    occurred_at)
SELECT 'e-' || i, 'happened', 's', (%(categories)s::text[])[1 + i %% 4], i / 4,
       jsonb_build_object('n', i), now(), now()
FROM generate_series(0, %(count)s - 1) AS i
"""
SET_LIVE_AT_HEADS = """
INSERT INTO consumer_checkpoints ("group", source, sequence_number, updated_at)
SELECT %(group)s, category, max(sequence_number), now() FROM events
WHERE category = ANY(%(categories)s) GROUP BY category
"""


class PlainRows(BatchProcessor):
    """One row per event; one bulk statement while rebuilding, else a
    multi-row insert.
    Records the live latency of each event (``occurred_at`` to commit)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        async with transaction.connection.cursor() as cursor:
            if transaction.rebuilding:
                await cursor.execute(
                    "INSERT INTO rows (seq, category) "
                    "SELECT * FROM unnest(%s::bigint[], %s::text[])",
                    [
                        [event.sequence_number for event in events],
                        [event.category for event in events],
                    ],
                )
                return
            await cursor.executemany(
                "INSERT INTO rows (seq, category) VALUES (%s, %s)",
                [(event.sequence_number, event.category) for event in events],
            )
        occurred = [event.occurred_at for event in events]
        transaction.on_commit(lambda: self._committed(occurred))

    def _committed(self, occurred: Sequence[datetime]) -> None:
        now = datetime.now(UTC)
        self.latencies.extend((now - moment).total_seconds() for moment in occurred)


def raw_read_rate(database: ConnectionInfo, events: int) -> float:
    with psycopg.connect(database.conninfo) as connection:
        started = time.perf_counter()
        rows = connection.execute(RAW_QUERY, (CATEGORIES,)).fetchall()
        seconds = time.perf_counter() - started
    if len(rows) != events:
        raise RuntimeError(f"read {len(rows)} events, expected {events}")
    return events / seconds


def percentile(values: Sequence[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def one_run(database: ConnectionInfo, events: int) -> Json:
    async with AsyncConnectionPool[AsyncConnection[Any]](
        database.conninfo, min_size=2, max_size=8, open=False
    ) as pool:
        processors: dict[int, PlainRows] = {}

        def processor_for(version: int) -> BatchProcessor:
            return processors.setdefault(version, PlainRows())

        catalog = ProjectionCatalog(pool)
        await catalog.ensure_initial(GROUP, "rebuild_bench", [ROWS])
        async with pool.connection() as connection:
            await connection.execute(
                SET_LIVE_AT_HEADS, {"group": GROUP, "categories": CATEGORIES}
            )
        store = EventStore(adapter=PostgresEventStorageAdapter(connection_source=pool))
        consumer = make_versioned_consumer(
            event_store=store,
            checkpoint_store=PostgresCheckpointStore(pool),
            projection=VersionedProjection(
                group=GROUP,
                processor_for=processor_for,
                migrations=[ROWS],
                rebuild_batch_size=REBUILD_BATCH_SIZE,
            ),
            subscription_requests=[CategoryIdentifier(category=c) for c in CATEGORIES],
            subscriber_id="bench",
            node_id="bench",
            refresh_interval=timedelta(milliseconds=200),
        )
        for category in CATEGORIES:
            await consumer.accept(store.category(category=category))
        running = True

        async def poll() -> None:
            while running:
                await consumer.consume_all()
                await asyncio.sleep(LIVE_INTERVAL)

        async def publish_live() -> None:
            stream = store.stream(category=LIVE_CATEGORY, stream="live")
            while running:
                await stream.publish(events=[NewEvent(name="live", payload={})])
                await asyncio.sleep(LIVE_INTERVAL)

        poller = asyncio.create_task(poll())
        await consumer.refresh()
        await asyncio.sleep(0.5)  # the live version settled
        publisher = asyncio.create_task(publish_live())
        try:
            started = time.perf_counter()
            await catalog.request_rebuild(GROUP)
            while True:
                versions = await catalog.versions(GROUP)
                if any(
                    v.version == 2 and v.state is VersionState.LIVE for v in versions
                ):
                    break
                await asyncio.sleep(0.05)
            seconds = time.perf_counter() - started
        finally:
            running = False
            for task in (poller, publisher):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await consumer.release_claims()
        async with pool.connection() as connection:
            cursor = await connection.execute(
                "SELECT count(*) FROM rebuild_bench.rows WHERE category = ANY(%s)",
                [CATEGORIES],
            )
            row = await cursor.fetchone()
        rebuilt = int(row[0]) if row else 0
        if rebuilt < events:
            raise RuntimeError(f"version 2 holds {rebuilt} rows, expected >= {events}")
        live = processors[1].latencies
        return {
            "seconds": seconds,
            "events_per_second": events / seconds,
            "live_events": len(live),
            "live_p50_ms": 1000 * statistics.median(live) if live else None,
            "live_p99_ms": 1000 * percentile(live, 0.99),
            "live_max_ms": 1000 * max(live) if live else None,
        }


async def run(ctx: BenchContext) -> None:
    events = 100_000 if ctx.quick else 1_000_000
    reps = 1 if ctx.quick else 3
    say("\n== 11. Rebuilding a projection: events/s vs the raw read, live latency ==")
    rows: list[list[object]] = []
    results: Json = {
        "events": events,
        "categories": len(CATEGORIES),
        "rebuild_batch_size": REBUILD_BATCH_SIZE,
        "live_interval_seconds": LIVE_INTERVAL,
        "raw_query": RAW_QUERY,
        "runs": [],
    }
    try:
        template = await ctx.postgres.new_database()
    except PostgresUnavailable as error:
        say(f"skipped ({error})")
        ctx.save(NAME, {"skipped": str(error)})
        return
    admin = ctx.postgres.get().connection_info
    try:
        with psycopg.connect(template.conninfo, autocommit=True) as connection:
            connection.execute(
                STORE_EVENTS, {"categories": CATEGORIES, "count": events}
            )
            connection.execute("VACUUM ANALYZE events")
        say(
            f"N = {events} events over {len(CATEGORIES)} categories; one consumer in "
            f"this process; rebuild batches of {REBUILD_BATCH_SIZE} written with unnest; "
            f"one live event every {LIVE_INTERVAL * 1000:.0f} ms; {reps} run(s)."
        )
        for _ in range(reps):
            raw = Spread.of(raw_read_rate(template, events) for _ in range(3))
            database = await ctx.postgres.new_database(template=template.dbname)
            try:
                result = await one_run(database, events)
            finally:
                drop_database(admin, database.dbname)
            result["raw_read_events_per_second"] = raw.as_json()
            result["ratio_to_raw_read"] = result["events_per_second"] / raw.median
            results["runs"].append(result)
            rows.append(
                [
                    f"{result['events_per_second']:,.0f}",
                    f"{raw.median:,.0f}",
                    f"{result['ratio_to_raw_read']:.2f}",
                    f"{result['seconds']:.1f}",
                    f"{result['live_p99_ms']:.0f}",
                    f"{result['live_max_ms']:.0f}",
                ]
            )
    finally:
        drop_database(admin, template.dbname)
    say(
        table(
            "rebuild of N events (one observer) beside the raw read, and live latency",
            [
                "rebuild events/s",
                "raw read events/s",
                "ratio",
                "seconds",
                "live p99 ms",
                "live max ms",
            ],
            rows,
        )
    )
    ctx.save(NAME, results)
