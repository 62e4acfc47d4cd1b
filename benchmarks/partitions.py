"""10. Partitions: one ``orders`` category spread over observers.

N stored orders over S customer streams in the one ``orders`` category (vacuumed
and analysed once loaded, as autovacuum would; each measured run on its own
checkpointed copy):

- In process (as benchmark 8): one ``make_transactional_consumer`` subscriber with
  the aggregating ``TotalsBatchProcessor`` drains the backlog reading the whole
  category (without and with ``read_ahead``), 1 partition of 1, and all 16
  partitions of 16 (batches of 500, or up to 2000 while a source is behind: the
  default ``catch_up_batch_size``; and with every batch 500 for comparison); and the per-event handler style on the same data
  (``FoldingTotalsEventHandler``: per-event code folding into
  ``transaction.batch_state``) over the 16 partitions. Each beside a raw read of
  the same events measured in the same run: one query, the same columns, the
  payloads decoded by the same JSON loader as the consumers' reader
  (``benchmarks.throughput.raw_read_rate``; the standard library's ``json``, as
  the raw read decoded before, is shown beside it). Partitioning's cost is the
  16 partitions' rate against the whole category's; the handler style's ratio is
  its rate against the 16 partitions' batch style.
- Processes (as benchmark 4): 1, 2 and 4 ``eventcomposition run`` observer
  processes of the sample application (16 partitions, the default) until the
  projection counts every order. Each observer's share is the events of the
  partitions it holds at the end (the allocation settles before the first batch);
  its CPU is its process's user + system time.
- Allocation by simulation: 10 groups of 64 partitions each, over 1 to 100
  subscribers joining one by one through the balancing coordinator's pure
  strategy (``broker/allocation.py``): the cost of planning every group, and the
  partitions moved per join.

Targets: 16 partitions cost <= 10% against the whole category on one observer; one
observer >= 0.5 of the raw read; the per-event handler style >= 0.8 of the batch
style; each of N observers within 1/N +- 10% of the events.
"""

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.types import CategoryIdentifier, EventSourceIdentifier

from eventcomposition.broker.allocation import GroupState, SubscriberRequest, balanced
from eventcomposition.broker.stores import event_source_factory
from eventcomposition.consumers import (
    PostgresCheckpointStore,
    Processor,
    make_transactional_consumer,
    source_key,
)
from eventcomposition.consumers.partitions import (
    DEFAULT_PARTITION_COUNT,
    partition_of,
    partitions_of,
)
from eventcomposition.consumers.transactional import DEFAULT_CATCH_UP_BATCH_SIZE
from eventcomposition.demo import Order, generate_orders
from eventcomposition.testing import ConnectionInfo, drop_database
from eventcomposition.testing.processes import NodeProcesses

from .cluster import NAMES, Cluster, cluster_environment, open_pool, spread_over
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
from .throughput import LOG_LEVEL, SETTINGS, raw_read_rate
from .transactional import (
    BATCH_SIZE,
    TOTALS_TABLE,
    FoldingTotalsEventHandler,
    TotalsBatchProcessor,
)

NAME = "partitions"
RUN_TIMEOUT = 600.0


def shaped_orders(events: int, streams: int) -> list[Order]:
    return generate_orders(events, customers=streams, seed=53)


@dataclass(frozen=True)
class Variant:
    """What one in-process run reads, and with what."""

    sources: Sequence[EventSourceIdentifier]
    handler: bool = False
    read_ahead: bool = False
    catch_up_batch_size: int | None = DEFAULT_CATCH_UP_BATCH_SIZE

    def processor(self) -> Processor:
        return FoldingTotalsEventHandler() if self.handler else TotalsBatchProcessor()


async def in_process_run(
    ctx: BenchContext,
    template: ConnectionInfo,
    events: int,
    variant: Variant,
) -> float:
    """Events/s of one transactional consumer draining ``variant``'s sources."""
    admin = ctx.postgres.get().connection_info
    database = ctx.postgres.run_copy(template)
    pool = await open_pool(database)
    try:
        adapter = PostgresEventStorageAdapter(connection_source=pool)
        consumer = make_transactional_consumer(
            event_store=EventStore(adapter=adapter),
            checkpoint_store=PostgresCheckpointStore(pool),
            subscriber_group="bench",
            subscription_requests=variant.sources,
            processor=variant.processor(),
            batch_size=BATCH_SIZE,
            catch_up_batch_size=variant.catch_up_batch_size,
            read_ahead=variant.read_ahead,
        )
        factory = event_source_factory(adapter)
        for source in variant.sources:
            await consumer.accept(factory.construct(source))
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


PARTITIONED = f"{DEFAULT_PARTITION_COUNT} partitions"
HANDLER = f"{PARTITIONED}, per-event handler"
FIXED = f"{PARTITIONED}, every batch {BATCH_SIZE}"


async def in_process(ctx: BenchContext, template: ConnectionInfo, events: int) -> Json:
    reps = 2 if ctx.quick else 5
    whole_category: list[EventSourceIdentifier] = [CategoryIdentifier(NAMES.category)]
    partitioned = list(partitions_of(NAMES.category, DEFAULT_PARTITION_COUNT))
    variants = {
        "whole category": Variant(whole_category),
        "whole category, read-ahead": Variant(whole_category, read_ahead=True),
        "1 partition of 1": Variant(list(partitions_of(NAMES.category, 1))),
        PARTITIONED: Variant(partitioned),
        FIXED: Variant(partitioned, catch_up_batch_size=None),
        HANDLER: Variant(partitioned, handler=True),
    }
    raw_rates: list[float] = []
    stdlib_rates: list[float] = []
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        raw_rates.append(raw_read_rate(template, events))
        stdlib_rates.append(raw_read_rate(template, events, fast_json=False))
        for name, variant in variants.items():
            rates[name].append(await in_process_run(ctx, template, events, variant))
    raw = Spread.of(raw_rates)
    stdlib = Spread.of(stdlib_rates)
    stdlib_ratio = Spread.of(sample / raw.median for sample in stdlib_rates)
    whole = Spread.of(rates["whole category"]).median
    rows: list[list[object]] = [
        ["raw read", reps, raw.text(".0f"), "1", "-"],
        [
            "raw read, stdlib json",
            reps,
            stdlib.text(".0f"),
            stdlib_ratio.text(".3f"),
            "-",
        ],
    ]
    results: Json = {
        "raw_read_events_per_second": raw.as_json(),
        "raw_read_stdlib_json_events_per_second": stdlib.as_json(),
        "consumer": {},
    }
    for name, samples in rates.items():
        rate = Spread.of(samples)
        ratio = Spread.of(sample / raw.median for sample in samples)
        cost = 1 - rate.median / whole
        rows.append([name, reps, rate.text(".0f"), ratio.text(".3f"), f"{cost:+.1%}"])
        results["consumer"][name] = {
            "events_per_second": rate.as_json(),
            "ratio_to_raw_read_median": ratio.as_json(),
            "ratio_to_stdlib_raw_read_median": rate.median / stdlib.median,
            "cost_against_whole_category": cost,
        }
    say(
        table(
            "one observer in process, events/s (min / median / max)",
            ["reads", "runs", "events/s", "ratio to raw read", "cost vs category"],
            rows,
        )
    )
    handler = Spread.of(rates[HANDLER]).median / Spread.of(rates[PARTITIONED]).median
    results["handler_to_batch_style"] = handler
    say(f"per-event handler style: {handler:.2f} of the batch style (16 partitions)")
    return results


async def processes_run(
    ctx: BenchContext, template: ConnectionInfo, observers: int, orders: list[Order]
) -> Json:
    admin = ctx.postgres.get().connection_info
    database = ctx.postgres.run_copy(template)
    per_partition = Counter(
        source_key(NAMES.partitions()[partition_of(o.customer_id, 16)]) for o in orders
    )
    pool = await open_pool(database)
    try:
        with NodeProcesses() as nodes:
            cluster = Cluster(
                nodes,
                pool,
                cluster_environment(database, settings=SETTINGS, log_level=LOG_LEVEL),
            )
            names = [f"observer-{n}" for n in range(1, observers + 1)]
            started_nodes = await cluster.start_observers(*names)
            cpu_before = {node.name: node.cpu_seconds() for node in started_nodes}
            cluster.start("coordinator", "coordinator-1")
            allocated_at, _ = await cluster.wait_holdings(
                spread_over(set(names)), timeout=90, what="the first allocation"
            )
            await until_applied(cluster, len(orders))
            seconds = time.time() - allocated_at
            held = await cluster.sources_by_node()
            cpu = {
                node.name: node.cpu_seconds() - cpu_before[node.name]
                for node in started_nodes
            }
        shares = {
            name: sum(per_partition[key] for key in held.get(name, set())) / len(orders)
            for name in names
        }
        return {
            "observers": observers,
            "events_per_second": len(orders) / seconds,
            "shares": shares,
            "cpu_seconds": cpu,
            "partitions_held": {name: len(held.get(name, ())) for name in names},
        }
    finally:
        await pool.close()
        drop_database(admin, database.dbname)


async def until_applied(cluster: Cluster, count: int) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT
    while await cluster.applied_orders() < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {count} orders applied in time")
        await asyncio.sleep(0.05)


async def in_processes(
    ctx: BenchContext, template: ConnectionInfo, orders: list[Order]
) -> Json:
    counts = (1, 2) if ctx.quick else (1, 2, 4)
    raw = Spread.of(raw_read_rate(template, len(orders)) for _ in range(3)).median
    rows: list[list[object]] = []
    runs: list[Json] = []
    for observers in counts:
        result = await processes_run(ctx, template, observers, orders)
        runs.append(result)
        shares = ", ".join(f"{share:.2f}" for share in result["shares"].values())
        cpu = ", ".join(f"{value:.1f}" for value in result["cpu_seconds"].values())
        rows.append(
            [
                observers,
                f"{result['events_per_second']:.0f}",
                f"{result['events_per_second'] / raw:.3f}",
                shares,
                cpu,
            ]
        )
    say(
        table(
            f"observer processes over {DEFAULT_PARTITION_COUNT} partitions "
            f"(raw read {raw:.0f} events/s)",
            ["observers", "events/s", "ratio to raw", "shares", "CPU s each"],
            rows,
        )
    )
    return {"raw_read_events_per_second": raw, "runs": runs}


def allocation_simulation(max_subscribers: int) -> Json:
    """10 groups of 64 partitions; subscribers join one by one."""
    groups = {
        f"group-{g}": tuple(partitions_of(f"category-{g}", 64)) for g in range(10)
    }
    holdings: dict[str, dict[str, tuple[Any, ...]]] = {g: {} for g in groups}
    rows: list[list[object]] = []
    samples: list[Json] = []
    for joined in range(1, max_subscribers + 1):
        subscribers = [f"s{n}" for n in range(joined)]
        started = time.perf_counter()
        moves = 0
        for group, sources in groups.items():
            requests = [SubscriberRequest(s, sources) for s in subscribers]
            # Revoke, then (once released) assign: two plans per join.
            plan = balanced(GroupState(group, requests, holdings[group]), 10_000)
            moves += plan.moves
            plan = balanced(GroupState(group, requests, plan.holdings), 10_000)
            holdings[group] = dict(plan.holdings)
        seconds = time.perf_counter() - started
        samples.append({"subscribers": joined, "seconds": seconds, "moves": moves})
        if joined in (1, 2, 4, 10, 25, 50, 64, 65, 100) and joined <= max_subscribers:
            rows.append([joined, f"{seconds * 1000:.2f}", moves])
    say(
        table(
            "allocation of 10 groups x 64 partitions as subscribers join",
            ["subscribers", "plan ms (10 groups, 2 plans)", "partitions moved"],
            rows,
        )
    )
    return {"joins": samples}


async def run(ctx: BenchContext) -> None:
    events = 20_000 if ctx.quick else 100_000
    streams = 2_000 if ctx.quick else 10_000
    say("\n== 10. Partitions: one category over observers ==")
    simulated = allocation_simulation(30 if ctx.quick else 100)
    try:
        template = await ctx.postgres.new_database()
    except PostgresUnavailable as error:
        say(f"skipped ({error})")
        ctx.save(NAME, {"skipped": str(error), "allocation": simulated})
        return
    orders = shaped_orders(events, streams)
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
    say(f"N = {events} orders over {streams} streams of one category.")
    results: Json = {"events": events, "streams": streams, "allocation": simulated}
    results["in_process"] = await in_process(ctx, template, events)
    results["processes"] = await in_processes(ctx, template, orders)
    say(
        "Targets: 16 partitions cost <= 10% against the whole category; one "
        "observer >= 0.5 of the raw read; the per-event handler style >= 0.8 of "
        "the batch style; each of N observers within 1/N +- 10%."
    )
    drop_database(ctx.postgres.get().connection_info, template.dbname)
    ctx.save(NAME, results)
