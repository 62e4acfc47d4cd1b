"""4. Throughput on PostgreSQL: 1, 2 and 4 observer processes against the raw read rate.

The sample app end to end: ``eventcomposition run`` observer processes (and one
coordinator-only process) project N stored orders of the demo's one category (in 16 partitions) into
customer totals in PostgreSQL. Two paths:

- batched (the sample app, ``DemoContainer``): a transactional consumer reads up to
  ``consumers.batch_size`` (500) events of a partition after its checkpoint, adds
  them up per customer and writes them with one upsert, in the transaction that
  moves the checkpoint; with 1, 2 and 4 observer processes.
- per-event handlers (``benchmarks.handler_app``): the same transactional
  consumer running an ``EventHandler`` over each batch, one observer process: the
  handler folds each order into the batch's changes (``transaction.batch_state``,
  one upsert per batch), or writes one upsert per event. Target: the first at 0.8
  of the batched path or more.
- per event (``benchmarks.per_event_app``): logicblocks' subscription consumer with
  the idempotent per-event processor (a projection load and save per event), one
  observer process; timed over its first ``PER_EVENT_SHARE`` of the orders, its
  steady rate (it would take minutes for all of them).

Each run gets its own copy (``CREATE DATABASE ... TEMPLATE``) of a database holding
the N orders. The clock starts when the coordinator's first allocation is in the
``subscriptions`` table and stops when the projection counts the orders (both polled
every 20 ms).

The bound: the rate at which the same N events can be read from the ``events``
table with one plain query (``SELECT * ... WHERE category = ANY(...) ORDER BY
sequence_number``, every row fetched into Python by psycopg as a tuple), measured
right before each row's runs, in the same run, on this machine. Like for like with
the consumers' reader: the same nine columns, the payloads decoded by the same JSON
loader (orjson, ``eventcomposition.consumers.decoding.use_fast_json``); only the
consumers make ``StoredEvent``s of the rows. (Before, the raw read decoded with the
standard library's ``json``, which made it slower and the ratios higher:
``raw_read_rate(..., fast_json=False)`` still measures that.)
"""

import os
import time
from collections import Counter

import psycopg
from logicblocks.event.store import EventStore, PostgresEventStorageAdapter

from eventcomposition.consumers.decoding import use_fast_json
from eventcomposition.demo import generate_orders
from eventcomposition.testing import ConnectionInfo, drop_database
from eventcomposition.testing.processes import NodeProcesses

from .cluster import (
    APP,
    NAMES,
    Cluster,
    cluster_environment,
    open_pool,
    until,
)
from .common import (
    BenchContext,
    Json,
    PostgresUnavailable,
    Spread,
    partition_key,
    publish_by_category,
    say,
    table,
)

NAME = "throughput"
CUSTOMERS = 400
PER_EVENT_APP = "benchmarks.per_event_app:PerEventDemoContainer"
HANDLER_APP = "benchmarks.handler_app:HandlerDemoContainer"
STATEMENT_HANDLER_APP = "benchmarks.handler_app:StatementHandlerDemoContainer"
PER_EVENT_SHARE = 0.15
RAW_QUERY = "SELECT * FROM events WHERE category = ANY(%s) ORDER BY sequence_number"
# Development settings with a faster allocation, so that the clock measures the
# processing; WARNING logs (logicblocks logs every projection save at INFO, the
# demo every batch). Polling, not NOTIFY: the orders are stored before the nodes
# start, and with wake = "notify" a source allocated after the first poll waits for
# the safety-net poll (consumers.notify_poll_interval, 10 s).
SETTINGS: dict[str, str | int | float] = {
    "consumers.wake": "poll",
    "broker.coordinator_distribution_interval": 0.1,
    "broker.observer_synchronisation_interval": 0.1,
    "broker.coordinator_leadership_attempt_interval": 0.1,
    "consumers.poll_interval": 0.1,
}
LOG_LEVEL = "WARNING"
RUN_TIMEOUT = 600.0


def raw_read_rate(
    database: ConnectionInfo, events: int, *, fast_json: bool = True
) -> float:
    """Events/s of one plain read of the demo category's ``events`` rows, the
    payloads decoded as the consumers' reader does (``fast_json``) or with the
    standard library."""
    categories = [NAMES.category]
    with psycopg.connect(database.conninfo) as connection:
        cursor = connection.cursor()
        if fast_json:
            use_fast_json(cursor)
        started = time.perf_counter()
        rows = cursor.execute(RAW_QUERY, (categories,)).fetchall()
        seconds = time.perf_counter() - started
    if len(rows) != events:
        raise RuntimeError(f"read {len(rows)} events, expected {events}")
    return events / seconds


async def one_run(
    ctx: BenchContext,
    template: ConnectionInfo,
    observers: int,
    orders: int,
    *,
    app: str = APP,
) -> tuple[float, float]:
    """Events/s with ``observers`` observer processes of ``app`` until the
    projection counts ``orders`` orders; and the processing seconds."""
    admin = ctx.postgres.get().connection_info
    database = ctx.postgres.run_copy(template)
    pool = await open_pool(database)
    try:
        with NodeProcesses() as nodes:
            cluster = Cluster(
                nodes,
                pool,
                cluster_environment(database, settings=SETTINGS, log_level=LOG_LEVEL),
                app=app,
            )
            ids = [f"observer-{n}" for n in range(1, observers + 1)]
            await cluster.start_observers(*ids)
            cluster.start("coordinator", "coordinator-1")
            allocated_at, _ = await cluster.wait_holdings(
                lambda held: bool(held), timeout=90, what="the first allocation"
            )
            done_at = 0.0

            async def complete() -> bool:
                nonlocal done_at
                done_at = time.time()
                return await cluster.applied_orders() >= orders

            await until(
                complete, timeout=RUN_TIMEOUT, what=f"{orders} orders projected"
            )
            for node in nodes:
                node.terminate()
            for node in nodes:
                await node.await_exit(30)
        seconds = done_at - allocated_at
        return orders / seconds, seconds
    finally:
        await pool.close()
        drop_database(admin, database.dbname)


async def run(ctx: BenchContext) -> None:
    events = 4_000 if ctx.quick else 20_000
    counts = [1, 2] if ctx.quick else [1, 2, 4]
    reps = 1 if ctx.quick else 3
    raw_reps = 3 if ctx.quick else 7
    say("\n== 4. Throughput on PostgreSQL: observer processes vs the raw read rate ==")
    try:
        template = await ctx.postgres.new_database()
    except PostgresUnavailable as error:
        say(f"skipped ({error})")
        ctx.save(NAME, {"skipped": str(error)})
        return
    orders = generate_orders(events, customers=CUSTOMERS, seed=31)
    pool = await open_pool(template)
    try:
        await publish_by_category(
            EventStore(adapter=PostgresEventStorageAdapter(connection_source=pool)),
            orders,
            names=NAMES,
        )
    finally:
        await pool.close()
    per_shard = Counter(partition_key(o.customer_id, NAMES) for o in orders)
    say(
        f"N = {events} orders ({CUSTOMERS} customers) in one category, {len(per_shard)} partitions "
        f"(largest {max(per_shard.values())}, smallest {min(per_shard.values())}); "
        f"1 coordinator-only + K observer-only processes, development settings with "
        f"{SETTINGS}, logs at {LOG_LEVEL}; {reps} run(s) per K, {raw_reps} raw reads "
        f"before each row; the per-event path timed over its first {PER_EVENT_SHARE:.0%} "
        "of the orders."
    )
    rows: list[list[object]] = []
    results: Json = {
        "events": events,
        "customers": CUSTOMERS,
        "events_per_partition": dict(per_shard),
        "settings": SETTINGS,
        "log_level": LOG_LEVEL,
        "raw_query": RAW_QUERY,
        "raw_read_repetitions": raw_reps,
        "per_event": {},
        "handlers": {},
        "observers": {},
    }
    per_event_orders = int(events * PER_EVENT_SHARE)
    plan: list[tuple[str, str, int, int, int]] = [
        ("per event", PER_EVENT_APP, 1, per_event_orders, 1),
        *[("batched", APP, observers, events, reps) for observers in counts],
        ("handler, batch state", HANDLER_APP, 1, events, reps),
        ("handler, a statement per event", STATEMENT_HANDLER_APP, 1, events, reps),
    ]
    for path, app, observers, orders_to_count, runs in plan:
        load_before = os.getloadavg()[0]
        raw = Spread.of(raw_read_rate(template, events) for _ in range(raw_reps))
        samples = [
            await one_run(ctx, template, observers, orders_to_count, app=app)
            for _ in range(runs)
        ]
        rate = Spread.of(s[0] for s in samples)
        seconds = Spread.of(s[1] for s in samples)
        ratio = Spread.of(s[0] / raw.median for s in samples)
        processes = f"{observers} observer process{'es' if observers > 1 else ''}"
        rows.append(
            [
                f"{path}, {processes}",
                runs,
                rate.text(".0f"),
                seconds.text(".2f", " s"),
                raw.text(".0f"),
                ratio.text(".4f"),
            ]
        )
        entry = {
            "app": app,
            "orders_counted": orders_to_count,
            "repetitions": runs,
            "load_average_1min": [load_before, os.getloadavg()[0]],
            "raw_read_events_per_second": raw.as_json(),
            "events_per_second": rate.as_json(),
            "seconds": seconds.as_json(),
            "ratio_to_raw_read_median": ratio.as_json(),
        }
        if path == "per event":
            results["per_event"] = entry
        elif path.startswith("handler"):
            results["handlers"][path] = entry
        else:
            results["observers"][str(observers)] = entry
    say(
        table(
            "events/s, min / median / max",
            [
                "what",
                "runs",
                "events/s",
                "seconds",
                "raw read events/s (just before)",
                "ratio to raw read (median)",
            ],
            rows,
        )
    )
    batched = results["observers"]["1"]["events_per_second"]["median"]
    for path, entry in results["handlers"].items():
        share = entry["events_per_second"]["median"] / batched
        entry["ratio_to_batched_one_observer_median"] = share
        say(f"{path}: {share:.2f} of the batched path with one observer process")
    say("Target: the batched path with one observer process at 0.25 of the raw read.")
    say("Target: the per-event handler (batch state) at 0.8 of the batched path.")
    say(
        "The processes share this machine's cores with PostgreSQL and with each other: "
        f"{os.cpu_count()} cores here."
    )
    drop_database(ctx.postgres.get().connection_info, template.dbname)
    ctx.save(NAME, results)
