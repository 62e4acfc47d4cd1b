"""11. Rebuilding a projection: events/s against a raw read, and live latency meanwhile.

As in production: one observer process (``eventcomposition run --role observer``,
the ``production`` settings profile) runs ``benchmarks/rebuild_app.py``, a versioned
projection of plain inserts (one row per event) over 4 categories, with a
coordinator process beside it, on a throwaway PostgreSQL server. This process only
publishes, reads and asks for the rebuild.

N events over the 4 categories are stored first (set-up, one INSERT ... SELECT);
version 1 is live and caught up (its checkpoints set at the heads: its own table's
content does not matter here). Then, in the same run:

- **live alone**: single events published at a steady 50 per second, each in its
  own transaction, to a random one of the 4 categories; an event's latency runs
  from just before its publish call to the observer's commit of the batch that
  applied it (the processor logs the wall-clock time from the commit callback);
- **raw read**: the same N events read with one plain query (the reader's nine
  columns ``... WHERE category = ANY(...) ORDER BY sequence_number``, every row
  fetched into Python as a tuple, the payloads decoded by the reader's JSON loader,
  orjson: like for like with the consumers' reader, as in the throughput
  benchmark), three times, the median;
- **rebuild**: ``ProjectionCatalog.request_rebuild`` starts version 2, which the
  observer builds from the first event (the application's bulk insert while
  ``transaction.rebuilding``) and swaps in once caught up, while the same steady
  publishing goes on. Its rate is timed from its start on the node to the swap
  (the node's log), and, as a user waits, from the request to the swap (the node
  notices a request within its refresh interval, 1 s, then prepares the version's
  schema). Live latency is that of the events published from the request to the
  swap. The node's CPU per rebuilt event (user + system, all its threads, live
  work included) is what the rebuild costs it, whatever else the machine runs.

Targets: the rebuild's rate >= 0.5 of the raw read's; live p99 <= 50 ms during the
rebuild. ``--quick``: 100,000 events, one run; full: 1,000,000 events, 3 runs.
"""

import asyncio
import os
import random
import statistics
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.types import JsonValue, NewEvent
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.consumers.decoding import EVENT_COLUMNS, use_fast_json
from eventcomposition.projections import ProjectionCatalog, VersionState
from eventcomposition.schema import migrate
from eventcomposition.testing import (
    ConnectionInfo,
    PostgresUnavailableError,
    ThrowawayPostgres,
    create_database,
    drop_database,
    unique_database_name,
)
from eventcomposition.testing.processes import (
    NodeProcess,
    NodeProcesses,
    node_environment,
)

from .common import (
    PROJECT_ROOT,
    BenchContext,
    Json,
    Spread,
    checkpointed_copy,
    first_logged,
    say,
    settle,
    table,
)
from .rebuild_app import (
    APP,
    CATEGORIES,
    COMMITTED,
    GROUP,
    REBUILD_BATCH_SIZE,
    ROWS,
    SCHEMA,
    WRITE,
)

NAME = "rebuild"
SWAPPED = "projection.swapped"
RATE = 50.0
TARGET_RATIO = 0.5
TARGET_P99_SECONDS = 0.050
START_TIMEOUT = 90.0
REBUILD_TIMEOUT = 900.0
RAW_QUERY = (
    f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE category = ANY(%s) "
    "AND sequence_number <= %s ORDER BY sequence_number"
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

type Pool = AsyncConnectionPool[AsyncConnection[Any]]


@dataclass
class Node:
    observer: NodeProcess
    store: EventStore
    catalog: ProjectionCatalog
    sent_at: dict[int, float] = field(default_factory=dict)
    published_at: dict[int, float] = field(default_factory=dict)
    next_number: int = 0

    def started_at(self) -> dict[int, float]:
        """When the batch that applied each live event began to be processed."""
        return first_logged(self.observer, COMMITTED, "started")

    def committed_at(self) -> dict[int, float]:
        return first_logged(self.observer, COMMITTED, "at")


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def latency_summary(node: Node, numbers: set[int], origin: float) -> Json:
    """p50, p99, max and mean of ``numbers``' latencies, and the slowest five
    (seconds since ``origin``, a wall-clock time, and latency)."""
    at, started = node.committed_at(), node.started_at()
    latencies = [at[n] - node.sent_at[n] for n in numbers]
    to_processor = [started[n] - node.sent_at[n] for n in numbers]
    publishing = [node.published_at[n] - node.sent_at[n] for n in numbers]
    slowest = sorted(
        ((node.sent_at[n] - origin, at[n] - node.sent_at[n]) for n in numbers),
        key=lambda pair: pair[1],
    )[-5:]
    return {
        "events": len(latencies),
        "p50_ms": 1000 * percentile(latencies, 0.50),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "max_ms": 1000 * max(latencies),
        "mean_ms": 1000 * statistics.fmean(latencies),
        # Publish to the processor's call (publish, wake-up, claim, read), then
        # the processor's call to the commit (its writes, checkpoint, commit).
        "publish_p50_ms": 1000 * percentile(publishing, 0.50),
        "publish_p99_ms": 1000 * percentile(publishing, 0.99),
        "to_processor_p50_ms": 1000 * percentile(to_processor, 0.50),
        "to_processor_p99_ms": 1000 * percentile(to_processor, 0.99),
        "slowest": [
            {"at_seconds": round(when, 3), "latency_ms": round(1000 * latency, 1)}
            for when, latency in slowest[::-1]
        ],
    }


async def publish(node: Node, category: str) -> int:
    n = node.next_number
    node.next_number += 1
    event: NewEvent[str, JsonValue] = NewEvent(name="live", payload={"live": n})
    stream = node.store.stream(category=category, stream=f"live-{n % 16}")
    node.sent_at[n] = time.time()
    await stream.publish(events=[event])
    node.published_at[n] = time.time()
    return n


async def committed(node: Node, numbers: set[int], timeout: float) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not numbers <= node.committed_at().keys():
        if time.monotonic() > deadline or not node.observer.running:
            missing = len(numbers - node.committed_at().keys())
            raise RuntimeError(
                f"rebuild: {missing} of {len(numbers)} live events not committed\n"
                f"{node.observer.output_tail()}"
            )
        await asyncio.sleep(0.05)


async def publish_steadily(node: Node, until: asyncio.Event, seed: int) -> set[int]:
    """Publish RATE events per second until ``until`` is set."""
    chooser = random.Random(seed)
    numbers = set()
    started = time.perf_counter()
    count = 0
    while not until.is_set():
        delay = started + count / RATE - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        numbers.add(await publish(node, chooser.choice(CATEGORIES)))
        count += 1
    return numbers


async def live_alone(node: Node, seconds: float) -> Json:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    origin = time.time()
    numbers = await publish_steadily(node, stop, seed=3)
    await committed(node, numbers, timeout=30)
    return latency_summary(node, numbers, origin)


async def swapped(catalog: ProjectionCatalog) -> bool:
    return any(
        v.version == 2 and v.state is VersionState.LIVE
        for v in await catalog.versions(GROUP)
    )


async def rebuild(node: Node, events: int) -> Json:
    stop = asyncio.Event()
    publisher = asyncio.create_task(publish_steadily(node, stop, seed=7))
    await asyncio.sleep(0.5)  # publishing steadily before the request
    try:
        cpu_before = cpu_seconds(node.observer.pid)
        started = time.perf_counter()
        await node.catalog.request_rebuild(GROUP)
        deadline = started + REBUILD_TIMEOUT
        while not await swapped(node.catalog):
            if time.perf_counter() > deadline or not node.observer.running:
                raise RuntimeError(
                    f"rebuild: no swap within {REBUILD_TIMEOUT:.0f} s\n"
                    + node.observer.output_tail()
                )
            await asyncio.sleep(0.02)
        seconds = time.perf_counter() - started
        cpu = cpu_seconds(node.observer.pid) - cpu_before
    finally:
        stop.set()
        numbers = await publisher
    await committed(node, numbers, timeout=30)
    request_at = time.time() - (time.perf_counter() - started)
    during = {
        n for n in numbers if request_at <= node.sent_at[n] <= request_at + seconds
    }
    building = logged_seconds(node.observer, "projection.rebuild-started", SWAPPED)
    return {
        # From the request to the swap, as a user waits (the node notices the
        # request within its refresh interval, 1 s, then prepares the schema).
        "seconds": seconds,
        "events_per_second": events / seconds,
        # The rebuild itself, from its start on the node to the swap (its log).
        "building_seconds": building,
        "building_events_per_second": events / building,
        # The observer's CPU (user + system, all its threads) per rebuilt event:
        # what the rebuild costs the node, whatever else runs on the machine.
        "observer_cpu_seconds": cpu,
        "observer_cpu_us_per_event": 1e6 * cpu / events,
        "live_during_rebuild": latency_summary(node, during, request_at),
    }


def logged_seconds(observer: NodeProcess, first: str, last: str) -> float:
    """Seconds between the observer's first ``first`` and last ``last`` records."""
    begun = observer.logs(first)[0]["timestamp"]
    ended = observer.logs(last)[-1]["timestamp"]
    return (
        datetime.fromisoformat(ended) - datetime.fromisoformat(begun)
    ).total_seconds()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_read_rate(
    database: ConnectionInfo, events: int, *, fast_json: bool = True
) -> float:
    """Events/s of one plain read of the first ``events`` events, as tuples of the
    reader's columns, the payloads decoded as the consumers' reader does
    (``fast_json``: orjson) or with the standard library."""
    with psycopg.connect(database.conninfo) as connection:
        row = connection.execute(
            "SELECT sequence_number FROM events ORDER BY sequence_number "
            "OFFSET %s LIMIT 1",
            [events - 1],
        ).fetchone()
        last = int(row[0]) if row else 0
        cursor = connection.cursor()
        if fast_json:
            use_fast_json(cursor)
        started = time.perf_counter()
        rows = cursor.execute(RAW_QUERY, (CATEGORIES, last)).fetchall()
        seconds = time.perf_counter() - started
    if len(rows) != events:
        raise RuntimeError(f"read {len(rows)} events, expected {events}")
    return events / seconds


def environment(
    database: ConnectionInfo, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = node_environment(
        database, environment="production", settings={"http.enabled": "false"}
    )
    env["REBUILD_BENCH_BATCH_SIZE"] = str(REBUILD_BATCH_SIZE)
    env["REBUILD_BENCH_WRITE"] = WRITE
    env.update(extra or {})
    return env


@asynccontextmanager
async def running_node(
    nodes: NodeProcesses, database: ConnectionInfo, extra: Mapping[str, str]
) -> AsyncIterator[Node]:
    async with AsyncConnectionPool[AsyncConnection[Any]](
        database.conninfo, min_size=1, max_size=3, open=False
    ) as pool:
        catalog = ProjectionCatalog(pool)
        await catalog.ensure_initial(GROUP, SCHEMA, [ROWS])
        async with pool.connection() as connection:
            await connection.execute(
                SET_LIVE_AT_HEADS, {"group": GROUP, "categories": CATEGORIES}
            )
        observer = nodes.run_node(
            app=APP,
            role="observer",
            node_id="rebuild-observer",
            env=environment(database, extra),
            cwd=PROJECT_ROOT,
        )
        nodes.run_node(
            app=APP,
            role="coordinator",
            node_id="rebuild-coordinator",
            env=environment(database, extra),
            cwd=PROJECT_ROOT,
        )
        store = EventStore(adapter=PostgresEventStorageAdapter(connection_source=pool))
        node = Node(observer, store, catalog)
        # One event per category: every source held and claimed before measuring.
        numbers = {await publish(node, category) for category in CATEGORIES}
        await committed(node, numbers, timeout=START_TIMEOUT)
        try:
            yield node
        finally:
            observer.terminate()
            await observer.await_exit(60)


async def one_run(
    nodes: NodeProcesses,
    template: ConnectionInfo,
    admin: ConnectionInfo,
    events: int,
    live_seconds: float,
    extra: Mapping[str, str],
) -> Json:
    database = checkpointed_copy(admin, template)
    try:
        async with running_node(nodes, database, extra) as node:
            alone = await live_alone(node, live_seconds)
            raw = Spread.of(
                [
                    await asyncio.to_thread(raw_read_rate, database, events)
                    for _ in "abc"
                ]
            )
            stdlib = await asyncio.to_thread(
                partial(raw_read_rate, database, events, fast_json=False)
            )
            result = await rebuild(node, events)
        with psycopg.connect(database.conninfo) as connection:
            row = connection.execute(
                "SELECT count(*) FROM rebuild_bench.rows WHERE seq <= "
                "(SELECT sequence_number FROM events ORDER BY sequence_number "
                "OFFSET %s LIMIT 1)",
                [events - 1],
            ).fetchone()
        rebuilt = int(row[0]) if row else 0
        if rebuilt != events:
            raise RuntimeError(f"version 2 holds {rebuilt} of the {events} events")
    finally:
        drop_database(admin, database.dbname)
    result["live_alone"] = alone
    result["raw_read_events_per_second"] = raw.as_json()
    # The same read decoding payloads with the standard library's json (the
    # figure earlier versions of this benchmark compared with).
    result["raw_read_stdlib_json_events_per_second"] = stdlib
    # The target's ratio: the rebuild's own rate (start to swap) to the raw read's.
    result["ratio_to_raw_read"] = result["building_events_per_second"] / raw.median
    result["request_to_swap_ratio_to_raw_read"] = (
        result["events_per_second"] / raw.median
    )
    return result


def start_server() -> ThrowawayPostgres:
    # The production profile insists on a password.
    server = ThrowawayPostgres(auth="scram-sha-256")
    server.start()
    return server


async def run(ctx: BenchContext) -> None:
    events = int(os.environ.get("REBUILD_BENCH_EVENTS", 0)) or (
        100_000 if ctx.quick else 1_000_000
    )
    reps = 1 if ctx.quick else 3
    live_seconds = 3.0 if ctx.quick else 10.0
    extra = {
        name: value
        for name, value in os.environ.items()
        if name.startswith("REBUILD_BENCH_") and name != "REBUILD_BENCH_EVENTS"
    }
    say("\n== 11. Rebuilding a projection: events/s vs the raw read, live latency ==")
    say(
        f"N = {events} events over {len(CATEGORIES)} categories; one observer process "
        f"(production profile) and a coordinator; rebuild batches of "
        f"{REBUILD_BATCH_SIZE} written with {WRITE}; {RATE:g} live single-event publishes per second from "
        f"this process, alone for {live_seconds:g} s, then during the rebuild; "
        f"{reps} run(s)."
    )
    try:
        server = await asyncio.to_thread(start_server)
    except PostgresUnavailableError as error:
        say(f"rebuild: skipped ({str(error).splitlines()[0]})")
        ctx.save(NAME, {"skipped": str(error)})
        return
    runs: list[Json] = []
    try:
        admin = server.connection_info
        template = create_database(admin, unique_database_name("rebuild-template"))
        await migrate(template.conninfo)
        with psycopg.connect(template.conninfo, autocommit=True) as connection:
            connection.execute(
                STORE_EVENTS, {"categories": CATEGORIES, "count": events}
            )
        settle(template)
        with NodeProcesses(log_dir=ctx.results_dir / "rebuild-nodes") as nodes:
            for _ in range(reps):
                runs.append(
                    await one_run(nodes, template, admin, events, live_seconds, extra)
                )
    finally:
        await asyncio.to_thread(server.stop)
    report(ctx, events, runs, extra)


def report(ctx: BenchContext, events: int, runs: list[Json], extra: Json) -> None:
    rows = []
    for result in runs:
        during, alone = result["live_during_rebuild"], result["live_alone"]
        rows.append(
            [
                f"{result['building_events_per_second']:,.0f}",
                f"{result['events_per_second']:,.0f}",
                f"{result['raw_read_events_per_second']['median']:,.0f}",
                f"{result['ratio_to_raw_read']:.2f}",
                "met" if result["ratio_to_raw_read"] >= TARGET_RATIO else "MISSED",
                f"{result['building_seconds']:.1f}",
                f"{result['observer_cpu_us_per_event']:.1f}",
                f"{alone['p99_ms']:.0f}",
                f"{during['p50_ms']:.0f}",
                f"{during['p99_ms']:.0f}",
                f"{during['max_ms']:.0f}",
                "met" if during["p99_ms"] <= 1000 * TARGET_P99_SECONDS else "MISSED",
            ]
        )
    say(
        table(
            "rebuild of N events on one observer beside the raw read; live latency (ms)",
            [
                "rebuild events/s",
                "request to swap",
                "raw read events/s",
                "ratio",
                ">= 0.5",
                "seconds",
                "node CPU us/event",
                "p99 alone",
                "p50 rebuild",
                "p99 rebuild",
                "max rebuild",
                "p99 <= 50",
            ],
            rows,
        )
    )
    ctx.save(
        NAME,
        {
            "events": events,
            "categories": len(CATEGORIES),
            "rebuild_batch_size": REBUILD_BATCH_SIZE,
            "rebuild_write": WRITE,
            "live_rate_per_second": RATE,
            "raw_query": RAW_QUERY,
            "node": "observer process (eventcomposition run, production profile), "
            "coordinator apart; publisher in the benchmark's process",
            "options": extra,
            "targets": {
                "ratio_to_raw_read": TARGET_RATIO,
                "live_p99_seconds": TARGET_P99_SECONDS,
            },
            "runs": runs,
        },
    )
