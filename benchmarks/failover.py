"""3. Failover with real processes on PostgreSQL: SIGKILL and SIGTERM of an observer.

One coordinator-only and two observer-only ``eventcomposition run`` processes of
the sample app, with the development settings on PostgreSQL. Each step signals an
observer that holds sources (SIGKILL or SIGTERM, alternately) while another
observer runs, then at once publishes one new order into each of the victim's
partitions. The hand-over time of a step runs from the signal until the last of
the victim's partitions has a new event processed on another node (the first
``demo.batch-applied`` of that partition in the other node's JSON log: the
transactional consumer committed a batch of it). Before
the next step a fresh standby observer is started, so there is always a node to
hand over to.

The bounds, from the settings: SIGTERM <= 1 distribution interval + 1 observer
synchronisation interval (the stopping node removes its subscriber rows);
SIGKILL <= the longer of coordinator max-time-since-last-seen and the claim lease,
+ 1 distribution interval + 1 synchronisation interval (the dead node's rows must
age out and its claims expire first). The consumer's
poll interval comes on top of both.

The rebalance case starts a third observer into a running cluster of two whose
sources are spread, and times it from the start of its process (and from its first
heartbeat, the first row of its subscriber) to the subscriptions table showing it
holding its fair share (floor or ceil of sources / observers, every source held,
no observer outside that range); the observer is then stopped, the sources spread
over two again, and the next repetition starts. The bound beside it is the issue's:
1 distribution interval + 1 synchronisation interval + one batch (the consumer's
poll interval); a staged hand-over takes a second distribution (one revokes, the
next assigns what the holders released), so that is shown too.
"""

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from logicblocks.event.store import EventStore, PostgresEventStorageAdapter

from eventcomposition.demo import Order
from eventcomposition.settings import load_settings
from eventcomposition.testing.processes import LogRecord, NodeProcess, NodeProcesses

from .cluster import (
    ALL_PARTITIONS,
    NAMES,
    Cluster,
    Pool,
    cluster_environment,
    open_pool,
    spread_over,
    timestamp,
    until,
)
from .common import (
    SETTINGS_DIR,
    BenchContext,
    Json,
    PostgresUnavailable,
    Spread,
    batch_partition,
    partition_key,
    publish_by_category,
    say,
    table,
)

NAME = "failover"
BATCH_APPLIED = "demo.batch-applied"
COORDINATOR_RUNNING = "event.processing.broker.coordinator.running"
HANDOVER_TIMEOUT = 60.0


@dataclass(frozen=True)
class Step:
    signal: str
    victim: str
    survivor_count: int
    sources: int
    handover_seconds: float
    first_source_seconds: float
    allocation_seconds: float
    exit_seconds: float | None
    exit_code: int | None


def orders_for(partitions: set[str], step: int) -> list[Order]:
    """One new order in each of ``partitions``, the partitions' keys (customers
    picked by their partition)."""
    wanted = set(partitions)
    orders: list[Order] = []
    n = 0
    while wanted:
        customer = f"failover-{step}-{n}"
        n += 1
        partition = partition_key(customer, NAMES)
        if partition in wanted:
            wanted.discard(partition)
            orders.append(
                Order(
                    order_id=f"{customer}-order", customer_id=customer, amount_cents=100
                )
            )
    return orders


def first_saves(
    nodes: list[NodeProcess], partitions: set[str], since: float
) -> dict[str, float]:
    """The first time each of ``partitions`` had a batch committed on ``nodes``."""
    first: dict[str, float] = {}
    for node in nodes:
        for record in node.logs(BATCH_APPLIED):
            partition = _category(record)
            at = timestamp(record)
            if partition in partitions and at >= since:
                first[partition] = min(at, first.get(partition, at))
    return first


def _category(record: LogRecord) -> str | None:
    return batch_partition(record)


async def one_step(
    cluster: Cluster,
    store: EventStore,
    observers: dict[str, NodeProcess],
    signal: str,
    step: int,
) -> Step:
    held = await cluster.sources_by_node()
    victim_id = max(
        (node_id for node_id in held if node_id in observers),
        key=lambda node_id: len(held[node_id]),
    )
    victim = observers.pop(victim_id)
    partitions = held[victim_id]
    others = list(observers.values())
    signalled = time.time()
    if signal == "SIGKILL":
        victim.kill()
    else:
        victim.terminate()
    await publish_by_category(store, orders_for(partitions, step), names=NAMES)
    allocated_at, _ = await cluster.wait_holdings(
        lambda now: victim_id not in now and partitions <= set().union(*now.values()),
        timeout=HANDOVER_TIMEOUT,
        what=f"{victim_id}'s sources on another node",
    )
    await until(
        lambda: _all_saved(others, partitions, signalled),
        timeout=HANDOVER_TIMEOUT,
        what=f"new events of {sorted(partitions)} processed elsewhere",
    )
    saves = first_saves(others, partitions, signalled)
    exit_code = await victim.await_exit(30)
    exited = victim.logs("node.stopped")
    exit_seconds = timestamp(exited[0]) - signalled if exited else None
    return Step(
        signal=signal,
        victim=victim_id,
        survivor_count=len(others),
        sources=len(partitions),
        handover_seconds=max(saves.values()) - signalled,
        first_source_seconds=min(saves.values()) - signalled,
        allocation_seconds=allocated_at - signalled,
        exit_seconds=exit_seconds,
        exit_code=exit_code,
    )


async def _all_saved(
    nodes: list[NodeProcess], partitions: set[str], since: float
) -> bool:
    return set(first_saves(nodes, partitions, since)) == partitions


async def run_steps(ctx: BenchContext, signals: list[str]) -> tuple[list[Step], Json]:
    database = await ctx.postgres.new_database()
    settings = load_settings(
        "development", settings_dir=SETTINGS_DIR, storage={"type": "postgres"}
    )
    broker = settings.broker
    bounds = {
        "SIGTERM": broker.coordinator_distribution_interval.total_seconds()
        + broker.observer_synchronisation_interval.total_seconds(),
        # The dead node's subscriber rows must age out and its claims expire.
        "SIGKILL": max(
            broker.coordinator_subscriber_max_time_since_last_seen,
            settings.consumers.claim_lease,
        ).total_seconds()
        + broker.coordinator_distribution_interval.total_seconds()
        + broker.observer_synchronisation_interval.total_seconds(),
    }
    described: Json = {
        "environment": "development (settings/development.toml) on PostgreSQL",
        "coordinator_distribution_interval": broker.coordinator_distribution_interval.total_seconds(),
        "observer_synchronisation_interval": broker.observer_synchronisation_interval.total_seconds(),
        "coordinator_subscriber_max_time_since_last_seen": broker.coordinator_subscriber_max_time_since_last_seen.total_seconds(),
        "subscriber_manager_heartbeat_interval": broker.subscriber_manager_heartbeat_interval.total_seconds(),
        "poll_interval": settings.consumers.poll_interval.total_seconds(),
        "claim_lease": settings.consumers.claim_lease.total_seconds(),
        "bounds_seconds": bounds,
    }
    pool: Pool = await open_pool(database)
    steps: list[Step] = []
    try:
        store = EventStore(adapter=PostgresEventStorageAdapter(connection_source=pool))
        with NodeProcesses() as nodes:
            cluster = Cluster(
                nodes,
                pool,
                cluster_environment(
                    database,
                    # It times the hand-over by the BATCH_APPLIED lines (DEBUG).
                    settings={},
                    log_level="DEBUG",
                ),
            )
            started = await cluster.start_observers("observer-1", "observer-2")
            observers = {node.name: node for node in started}
            coordinator = cluster.start("coordinator", "coordinator-1")
            await coordinator.await_log(COORDINATOR_RUNNING, 90)
            await cluster.wait_holdings(
                spread_over(set(observers)), timeout=90, what="the sources spread"
            )
            next_id = 3
            for index, signal in enumerate(signals):
                if index > 0:
                    standby = f"observer-{next_id}"
                    next_id += 1
                    observers.update(
                        {
                            node.name: node
                            for node in await cluster.start_observers(standby)
                        }
                    )
                steps.append(await one_step(cluster, store, observers, signal, index))
            for node in nodes:
                node.terminate()
            for node in nodes:
                if node.running:
                    await node.await_exit(30)
    finally:
        await pool.close()
    return steps, described


@dataclass(frozen=True)
class Join:
    observer: str
    share: int
    start_seconds: float
    heartbeat_seconds: float


def fair_share(observers: set[str]) -> Callable[[dict[str, set[str]]], bool]:
    """Every source held, each of ``observers`` holding floor or ceil of its share."""
    low, extra = divmod(len(ALL_PARTITIONS), len(observers))
    high = low + (1 if extra else 0)

    def condition(held: dict[str, set[str]]) -> bool:
        return (
            set(held) == observers
            and set().union(*held.values()) == ALL_PARTITIONS
            and sum(len(v) for v in held.values()) == len(ALL_PARTITIONS)
            and all(low <= len(v) <= high for v in held.values())
        )

    return condition


async def first_heartbeat(cluster: Cluster, node_id: str) -> float:
    """When (``time.time()``) ``node_id``'s subscriber first shows."""
    await until(
        lambda: _subscribed(cluster, node_id),
        timeout=HANDOVER_TIMEOUT,
        what=f"a first heartbeat of {node_id}",
        interval=0.01,
    )
    return time.time()


async def _subscribed(cluster: Cluster, node_id: str) -> bool:
    return node_id in await cluster.subscriber_nodes()


async def rebalance_joins(ctx: BenchContext, repetitions: int) -> list[Join]:
    database = await ctx.postgres.new_database()
    pool: Pool = await open_pool(database)
    joins: list[Join] = []
    try:
        with NodeProcesses() as nodes:
            cluster = Cluster(
                nodes,
                pool,
                cluster_environment(database, settings={}, log_level="INFO"),
            )
            base = {
                node.name for node in await cluster.start_observers("base-1", "base-2")
            }
            coordinator = cluster.start("coordinator", "coordinator-1")
            await coordinator.await_log(COORDINATOR_RUNNING, 90)
            await cluster.wait_holdings(
                spread_over(base), timeout=90, what="the sources spread over two"
            )
            for index in range(repetitions):
                name = f"joining-{index + 1}"
                started = time.time()
                joining = cluster.start("observer", name)
                heartbeat = await first_heartbeat(cluster, name)
                held_at, held = await cluster.wait_holdings(
                    fair_share(base | {name}),
                    timeout=HANDOVER_TIMEOUT,
                    what=f"{name} holding its fair share",
                    interval=0.01,
                )
                joins.append(
                    Join(name, len(held[name]), held_at - started, held_at - heartbeat)
                )
                joining.terminate()
                await joining.await_exit(30)
                await cluster.wait_holdings(
                    fair_share(base), timeout=HANDOVER_TIMEOUT, what="back to two"
                )
            for node in nodes:
                node.terminate()
            for node in nodes:
                if node.running:
                    await node.await_exit(30)
    finally:
        await pool.close()
    return joins


def report_rebalance(joins: list[Join], described: Json) -> Json:
    distribution = described["coordinator_distribution_interval"]
    synchronisation = described["observer_synchronisation_interval"]
    batch = described["poll_interval"]
    bound = distribution + synchronisation + batch
    staged = 2 * distribution + synchronisation + batch
    from_start = Spread.of(j.start_seconds for j in joins)
    from_heartbeat = Spread.of(j.heartbeat_seconds for j in joins)
    verdict = "met" if from_heartbeat.maximum <= bound else "MISSED"
    staged_verdict = "met" if from_heartbeat.maximum <= staged else "MISSED"
    say(
        table(
            f"rebalance: a 3rd observer joins 2 holding {len(ALL_PARTITIONS)} "
            "sources; seconds until it holds its fair share, min / median / max",
            [
                "joins",
                "share",
                "from its process start",
                "from its first heartbeat",
                "bound (distribution + sync + batch)",
                "staged bound (2 distributions + sync + batch)",
            ],
            [
                [
                    len(joins),
                    ",".join(sorted({str(j.share) for j in joins})),
                    from_start.text(".2f", " s"),
                    from_heartbeat.text(".2f", " s"),
                    f"<= {bound:g} s: {verdict}",
                    f"<= {staged:g} s: {staged_verdict}",
                ]
            ],
        )
    )
    say(
        "From its process start includes the interpreter's start and imports; the "
        "bound is counted from the first heartbeat, when the coordinator can first "
        "see the new observer. Holdings are read from the subscriptions table every "
        "10 ms."
    )
    return {
        "joins": [j.__dict__ for j in joins],
        "from_start_seconds": from_start.as_json(),
        "from_first_heartbeat_seconds": from_heartbeat.as_json(),
        "bound_seconds": bound,
        "verdict": verdict,
        "staged_bound_seconds": staged,
        "staged_verdict": staged_verdict,
        "load_average_1min": os.getloadavg()[0],
    }


async def run(ctx: BenchContext) -> None:
    per_signal = 1 if ctx.quick else 3
    signals = ["SIGKILL", "SIGTERM"] * per_signal
    say("\n== 3. Failover with real processes on PostgreSQL ==")
    try:
        steps, described = await run_steps(ctx, signals)
    except PostgresUnavailable as error:
        say(f"skipped ({error})")
        ctx.save(NAME, {"skipped": str(error)})
        return
    bounds: dict[str, float] = described["bounds_seconds"]
    say(
        f"1 coordinator-only + observer-only processes, {described['environment']}: "
        f"distribution {described['coordinator_distribution_interval']:g}s, sync "
        f"{described['observer_synchronisation_interval']:g}s, max time since last seen "
        f"{described['coordinator_subscriber_max_time_since_last_seen']:g}s, heartbeat "
        f"{described['subscriber_manager_heartbeat_interval']:g}s, poll "
        f"{described['poll_interval']:g}s; {per_signal} step(s) per signal, each "
        "moving all the victim's sources to a running observer."
    )
    rows: list[list[object]] = []
    results: Json = {
        "settings": described,
        "steps": [s.__dict__ for s in steps],
        "by_signal": {},
    }
    for signal in ("SIGTERM", "SIGKILL"):
        chosen = [s for s in steps if s.signal == signal]
        handover = Spread.of(s.handover_seconds for s in chosen)
        first = Spread.of(s.first_source_seconds for s in chosen)
        allocation = Spread.of(s.allocation_seconds for s in chosen)
        bound = bounds[signal]
        verdict = "met" if handover.maximum <= bound else "MISSED"
        exits = [s.exit_seconds for s in chosen if s.exit_seconds is not None]
        rows.append(
            [
                signal,
                len(chosen),
                f"{sum(s.sources for s in chosen) / max(len(chosen), 1):.1f}",
                allocation.text(".2f", " s"),
                first.text(".2f", " s"),
                handover.text(".2f", " s"),
                f"<= {bound:g} s: {verdict}",
                Spread.of(exits).text(".2f", " s") if exits else "(killed)",
            ]
        )
        results["by_signal"][signal] = {
            "steps": len(chosen),
            "reallocated_seconds": allocation.as_json(),
            "first_source_processed_seconds": first.as_json(),
            "handover_seconds": handover.as_json(),
            "bound_seconds": bound,
            "verdict": verdict,
            "exit_codes": [s.exit_code for s in chosen],
            "load_average_1min": os.getloadavg()[0],
        }
    say(
        table(
            "seconds after the signal, min / median / max",
            [
                "signal",
                "steps",
                "sources moved",
                "reallocated (subscriptions table)",
                "first source processed elsewhere",
                "all sources processed elsewhere (hand-over)",
                "bound",
                "victim logged node.stopped",
            ],
            rows,
        )
    )
    say(
        "A bound is met when every step is within it. 'reallocated' is when the "
        "subscriptions table (polled every 20 ms) shows the victim's sources on "
        "another node; the hand-over adds the survivor's observer synchronisation "
        "and its consumer's next poll."
    )
    joins = await rebalance_joins(ctx, 2 if ctx.quick else 5)
    results["rebalance"] = report_rebalance(joins, described)
    ctx.save(NAME, results)
