"""8. One transactional consumer in process on PostgreSQL, against the raw read rate.

N stored orders over the demo's 8 shard categories are applied by one
``make_transactional_consumer`` subscriber (batches of 500) with a trivial
aggregating ``BatchProcessor``: one upsert of the batch's totals per customer (one
statement, the totals passed as one JSON document), in the transaction that also
writes the checkpoint. The same with per-event
``EventHandler``s: one folding each order into the batch's totals
(``transaction.batch_state``, one upsert per batch), one writing an upsert per
event. The consumer accepts every category
directly (no broker: allocation is not what is measured) and one ``consume_all``
drains the backlog; the clock covers that call. Each run gets its own copy of a
database holding the N orders.

Two readers are measured: the direct SQL read the PostgreSQL checkpoint store uses,
and logicblocks' category iterate (``StoreEventReader``). The bound is the raw read
rate of the same events in the same run (``benchmarks.throughput.raw_read_rate``).
"""

import time
from collections import Counter
from collections.abc import Sequence

import orjson
from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.types import StoredEvent

from eventcomposition.broker.stores import event_source_factory
from eventcomposition.consumers import (
    BatchProcessor,
    EventHandler,
    EventReader,
    PostgresCheckpointStore,
    Processor,
    StoreEventReader,
    Transaction,
    make_transactional_consumer,
)
from eventcomposition.demo import generate_orders
from eventcomposition.testing import ConnectionInfo, drop_database

from .cluster import NAMES, open_pool
from .common import (
    BenchContext,
    Json,
    PostgresUnavailable,
    Spread,
    publish_by_category,
    say,
    settle,
    table,
)
from .throughput import raw_read_rate

NAME = "transactional"
CUSTOMERS = 400
BATCH_SIZE = 500
TOTALS_TABLE = (
    "CREATE TABLE bench_totals (customer_id text PRIMARY KEY, "
    "orders bigint NOT NULL, amount_cents bigint NOT NULL)"
)
# A batch's totals go as one JSON parameter ([customer, orders, cents] per row):
# orjson writes it in a fraction of the client CPU psycopg takes to write three
# arrays element by element (0.5 against 2.2 ms for 600 customers).
UPSERT = (
    "INSERT INTO bench_totals (customer_id, orders, amount_cents) "
    "SELECT t->>0, (t->>1)::bigint, (t->>2)::bigint "
    "FROM jsonb_array_elements(%s::jsonb) AS t "
    "ON CONFLICT (customer_id) DO UPDATE SET "
    "orders = bench_totals.orders + excluded.orders, "
    "amount_cents = bench_totals.amount_cents + excluded.amount_cents"
)


class TotalsBatchProcessor(BatchProcessor):
    """Adds a batch's orders to their customers' totals with one statement."""

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        orders: Counter[str] = Counter()
        amounts: Counter[str] = Counter()
        for event in events:
            payload = event.payload
            if isinstance(payload, dict):
                amount = payload.get("amount_cents")
                orders[event.stream] += 1
                amounts[event.stream] += amount if isinstance(amount, int) else 0
        await transaction.connection.execute(
            UPSERT, (totals_document(orders, amounts),)
        )


UPSERT_ONE = (
    "INSERT INTO bench_totals (customer_id, orders, amount_cents) "
    "VALUES (%s, 1, %s) "
    "ON CONFLICT (customer_id) DO UPDATE SET "
    "orders = bench_totals.orders + 1, "
    "amount_cents = bench_totals.amount_cents + excluded.amount_cents"
)


class TotalsEventHandler(EventHandler):
    """Adds one order to its customer's totals: one statement per event."""

    async def process_event(self, event: StoredEvent, transaction: Transaction) -> None:
        payload = event.payload
        amount = payload.get("amount_cents") if isinstance(payload, dict) else None
        await transaction.connection.execute(
            UPSERT_ONE, (event.stream, amount if isinstance(amount, int) else 0)
        )


class FoldingTotalsEventHandler(EventHandler):
    """Folds each order into the batch's totals (``transaction.batch_state``),
    written with one statement per batch: per-event code at batch speed."""

    async def process_event(self, event: StoredEvent, transaction: Transaction) -> None:
        payload = event.payload
        amount = payload.get("amount_cents") if isinstance(payload, dict) else None
        totals = transaction.batch_state(self, Totals, write_totals)
        totals.orders[event.stream] += 1
        totals.amounts[event.stream] += amount if isinstance(amount, int) else 0


class Totals:
    def __init__(self) -> None:
        self.orders: Counter[str] = Counter()
        self.amounts: Counter[str] = Counter()


async def write_totals(totals: Totals, transaction: Transaction) -> None:
    await transaction.connection.execute(
        UPSERT, (totals_document(totals.orders, totals.amounts),)
    )


def totals_document(orders: Counter[str], amounts: Counter[str]) -> str:
    """``UPSERT``'s parameter: ``[customer, orders, amount_cents]`` per customer."""
    return orjson.dumps([[c, n, amounts[c]] for c, n in orders.items()]).decode()


async def one_run(
    ctx: BenchContext,
    template: ConnectionInfo,
    events: int,
    *,
    direct: bool,
    processor: Processor | None = None,
) -> float:
    """Events/s of one transactional consumer draining the backlog."""
    admin = ctx.postgres.get().connection_info
    database = ctx.postgres.run_copy(template)
    pool = await open_pool(database)
    try:
        adapter = PostgresEventStorageAdapter(connection_source=pool)
        event_store = EventStore(adapter=adapter)
        reader: EventReader | None = None if direct else StoreEventReader(event_store)
        consumer = make_transactional_consumer(
            event_store=event_store,
            checkpoint_store=PostgresCheckpointStore(pool),
            subscriber_group="bench",
            subscription_requests=NAMES.partitions(),
            processor=processor or TotalsBatchProcessor(),
            batch_size=BATCH_SIZE,
            event_reader=reader,
        )
        sources = event_source_factory(adapter)
        for partition in NAMES.partitions():
            await consumer.accept(sources.construct(partition))
        started = time.perf_counter()
        await consumer.consume_all()
        seconds = time.perf_counter() - started
        async with pool.connection() as connection:
            cursor = await connection.execute("SELECT sum(orders) FROM bench_totals")
            row = await cursor.fetchone()
        if row is None or row[0] != events:
            raise RuntimeError(f"applied {row}, expected {events} orders")
        return events / seconds
    finally:
        await pool.close()
        drop_database(admin, database.dbname)


async def run(ctx: BenchContext) -> None:
    events = 5_000 if ctx.quick else 20_000
    reps = 2 if ctx.quick else 5
    say("\n== 8. One transactional consumer in process vs the raw read rate ==")
    try:
        template = await ctx.postgres.new_database()
    except PostgresUnavailable as error:
        say(f"skipped ({error})")
        ctx.save(NAME, {"skipped": str(error)})
        return
    orders = generate_orders(events, customers=CUSTOMERS, seed=47)
    pool = await open_pool(template)
    try:
        await publish_by_category(
            EventStore(adapter=PostgresEventStorageAdapter(connection_source=pool)),
            orders,
            names=NAMES,
        )
        async with pool.connection() as connection:
            await connection.execute(TOTALS_TABLE)
    finally:
        await pool.close()
    settle(template)
    say(
        f"N = {events} orders ({CUSTOMERS} customers) in one category, "
        f"{len(NAMES.partitions())} partitions; batches of {BATCH_SIZE}; {reps} runs each, interleaved."
    )
    raw_rates: list[float] = []
    rates: dict[str, list[float]] = {
        "direct SQL read": [],
        "per-event handler, batch state": [],
        "per-event handler, a statement per event": [],
        "logicblocks iterate": [],
    }
    for _ in range(reps):
        raw_rates.append(raw_read_rate(template, events))
        rates["direct SQL read"].append(
            await one_run(ctx, template, events, direct=True)
        )
        rates["per-event handler, batch state"].append(
            await one_run(
                ctx,
                template,
                events,
                direct=True,
                processor=FoldingTotalsEventHandler(),
            )
        )
        rates["per-event handler, a statement per event"].append(
            await one_run(
                ctx, template, events, direct=True, processor=TotalsEventHandler()
            )
        )
        rates["logicblocks iterate"].append(
            await one_run(ctx, template, events, direct=False)
        )
    raw = Spread.of(raw_rates)
    rows: list[list[object]] = [
        ["raw read (one plain query)", reps, raw.text(".0f"), "1 (the bound)"]
    ]
    results: Json = {
        "events": events,
        "customers": CUSTOMERS,
        "batch_size": BATCH_SIZE,
        "raw_read_events_per_second": raw.as_json(),
        "consumer": {},
    }
    for what, samples in rates.items():
        rate = Spread.of(samples)
        ratio = Spread.of(sample / raw.median for sample in samples)
        rows.append(
            [
                f"transactional consumer, {what}",
                reps,
                rate.text(".0f"),
                ratio.text(".3f"),
            ]
        )
        results["consumer"][what] = {
            "events_per_second": rate.as_json(),
            "ratio_to_raw_read_median": ratio.as_json(),
        }
    say(
        table(
            "events/s, min / median / max",
            ["what", "runs", "events/s", "ratio to raw read (median)"],
            rows,
        )
    )
    say("Target: one consumer at 0.25 of the raw read rate or more.")
    drop_database(ctx.postgres.get().connection_info, template.dbname)
    ctx.save(NAME, results)
