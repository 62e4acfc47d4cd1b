"""A real cluster: ``eventcomposition run`` processes of the sample app on PostgreSQL.

Each test starts coordinator-only and observer-only node processes with fast
timings (the ``test`` settings profile), publishes orders
from the test process and checks the projection in PostgreSQL, while it kills,
stops or restarts things: an observer (SIGKILL, SIGTERM), the leading coordinator,
the PostgreSQL server. The last tests feed the command bad input.

Observers start (and their subscribers are in the ``subscribers`` table) before the
coordinator, so that the first distribution already spreads the sources; joins into
a running cluster are tested in test_rebalancing_processes.py.
"""

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from logicblocks.event.projection import (
    PostgresProjectionStorageAdapter,
    ProjectionStore,
)
from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.consumers import source_key
from eventcomposition.consumers.partitions import (
    CategoryPartition,
    partition_of,
    source_identifier,
)
from eventcomposition.demo import (
    CustomerTotals,
    DemoNames,
    Order,
    expected_totals,
    generate_orders,
    publish_orders,
    read_totals,
)
from eventcomposition.schema import migrate
from eventcomposition.testing import (
    ConnectionInfo,
    PostgresUnavailableError,
    ThrowawayPostgres,
    create_database,
    unique_database_name,
)
from eventcomposition.testing.processes import (
    CompletedNode,
    LogRecord,
    NodeProcess,
    NodeProcesses,
    node_environment,
    run_command,
    run_to_completion,
)
from eventcomposition.testing.pytest_plugin import postgres_unavailable
from eventcomposition.testing.waiting import wait_until

pytestmark = pytest.mark.usefixtures("quiet_test_process_logs")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SETTINGS_DIR = PROJECT_ROOT / "settings"
APP = "eventcomposition.containers.demo:DemoContainer"
NAMES = DemoNames()
PARTITION_COUNT = 16  # the default: the demo's group names no count
ALL_PARTITIONS = frozenset(source_key(p) for p in NAMES.partitions(PARTITION_COUNT))

# Generous bounds: nodes are Python processes that import a lot on start, and the
# machines running this may have two cores.
START_TIMEOUT = 60.0
PROCESSING_TIMEOUT = 60.0
# test.toml sets consumers.stop_timeout = 5 s.
STOP_TIMEOUT = 5.0

COORDINATOR_RUNNING = "event.processing.broker.coordinator.running"
COORDINATOR_STARTING = "event.processing.broker.coordinator.starting"
# The demo's processor logs each batch it committed, with its category, first stream and orders,
# at DEBUG: the tests that follow the batches run their nodes at that level.
BATCH_APPLIED = "demo.batch-applied"
ACCEPTING_SOURCE = "consumer.source-accepted"
OBSERVER_STARTING = "event.processing.broker.observer.starting"
SUBSCRIBER_MANAGER_STARTING = "event.processing.broker.subscriber-manager.starting"
DISTRIBUTION_COMPLETE = "event.processing.broker.coordinator.distribution.complete"

# Which node holds which sources: a subscription belongs to the subscriber with
# its ("group", id); its own node_id is that of the coordinator that allocated it.
HELD_SOURCES = """
    SELECT r.node_id, s.event_sources
    FROM subscriptions s JOIN subscribers r USING ("group", id)
    WHERE s."group" = %s
"""
SUBSCRIBER_NODES = 'SELECT node_id FROM subscribers WHERE "group" = %s'
MALFORMED_ORDER_POSITIONS = """
    SELECT stream, position FROM events
    WHERE name = 'order-placed' AND (
        NOT payload ? 'amount_cents'
        OR jsonb_typeof(payload->'amount_cents') <> 'number'
    )
"""

type Pool = AsyncConnectionPool[AsyncConnection[Any]]


class Cluster:
    """The node processes of one test and the database they share."""

    def __init__(
        self, nodes: NodeProcesses, pool: Pool, environment: dict[str, str]
    ) -> None:
        self.nodes = nodes
        self.pool = pool
        self.environment = environment
        self.event_store = EventStore(
            adapter=PostgresEventStorageAdapter(connection_source=pool)
        )
        self.projection_store = ProjectionStore(
            adapter=PostgresProjectionStorageAdapter(connection_source=pool)
        )

    def start(
        self,
        role: str,
        node_id: str,
        *,
        environment: dict[str, str] | None = None,
        migrate: bool = False,
    ) -> NodeProcess:
        return self.nodes.run_node(
            env=environment or self.environment,
            app=APP,
            role=role,
            node_id=node_id,
            migrate=migrate,
            cwd=PROJECT_ROOT,
        )

    async def start_observers(self, *node_ids: str) -> list[NodeProcess]:
        """Start observers at once; return when each runs and is subscribed."""
        observers = [self.start("observer", node_id) for node_id in node_ids]
        for observer in observers:
            await observer.await_log("node.running", START_TIMEOUT)
        await wait_until(
            lambda: self._subscribed(set(node_ids)),
            timeout=START_TIMEOUT,
            description=f"subscribers of {', '.join(node_ids)} in the table",
        )
        return observers

    async def start_coordinator(self, node_id: str) -> NodeProcess:
        """Start a coordinator; return when it leads."""
        coordinator = self.start("coordinator", node_id)
        await coordinator.await_log(COORDINATOR_RUNNING, START_TIMEOUT)
        return coordinator

    async def _subscribed(self, node_ids: set[str]) -> bool:
        return node_ids <= await self.subscriber_nodes()

    async def subscriber_nodes(self) -> set[str]:
        async with self.pool.connection() as connection:
            cursor = await connection.execute(
                SUBSCRIBER_NODES, (NAMES.subscriber_group,)
            )
            return {str(row[0]) for row in await cursor.fetchall()}

    async def sources_by_node(self) -> dict[str, set[str]]:
        """The partitions (by key) each node's subscribers hold now (empty
        holdings left out)."""
        async with self.pool.connection() as connection:
            cursor = await connection.execute(HELD_SOURCES, (NAMES.subscriber_group,))
            rows = await cursor.fetchall()
        held: dict[str, set[str]] = {}
        for node_id, sources in rows:
            keys = {source_key(source_identifier(source)) for source in sources}
            if keys:
                held.setdefault(str(node_id), set()).update(keys)
        return held

    async def wait_for_holdings(
        self,
        condition: Callable[[dict[str, set[str]]], bool],
        *,
        timeout: float,  # noqa: ASYNC109 - a deadline for the polling loop
        description: str,
    ) -> dict[str, set[str]]:
        held: dict[str, set[str]] = {}

        async def check() -> bool:
            nonlocal held
            held = await self.sources_by_node()
            return condition(held)

        try:
            await wait_until(check, timeout=timeout, description=description)
        except AssertionError as error:
            raise AssertionError(f"{error}; holdings: {held}") from None
        return held

    async def wait_until_spread(
        self, observers: Sequence[NodeProcess]
    ) -> dict[str, set[str]]:
        """Every partition allocated, each observer holding some, none twice; and
        each observer consuming what it holds."""
        names = {observer.name for observer in observers}
        held = await self.wait_for_holdings(
            lambda held: (
                set(held) == names
                and set().union(*held.values()) == ALL_PARTITIONS
                and sum(len(v) for v in held.values()) == len(ALL_PARTITIONS)
            ),
            timeout=START_TIMEOUT,
            description=f"every partition allocated over {', '.join(sorted(names))}",
        )
        await wait_until(
            lambda: all(
                accepted_since(observer, 0) >= held[observer.name]
                for observer in observers
            ),
            timeout=START_TIMEOUT,
            description="each observer accepting the partitions it holds",
        )
        return held

    async def publish(self, orders: Sequence[Order]) -> None:
        await publish_orders(self.event_store, orders, names=NAMES)

    async def totals(self) -> dict[str, CustomerTotals]:
        return await read_totals(self.projection_store, NAMES.projection_name)

    async def wait_for_projection(
        self,
        orders: Sequence[Order],
        *,
        timeout: float = PROCESSING_TIMEOUT,  # noqa: ASYNC109 - a polling deadline
    ) -> None:
        expected = expected_totals(orders)
        actual: dict[str, CustomerTotals] = {}

        async def complete() -> bool:
            nonlocal actual
            actual = await self.totals()
            return actual == expected

        try:
            await wait_until(
                complete,
                timeout=timeout,
                interval=0.2,
                description=f"the projection of {len(orders)} orders",
            )
        except AssertionError as error:
            applied = sum(t.order_count for t in actual.values())
            wanted = sum(t.order_count for t in expected.values())
            wrong = {
                customer: (actual.get(customer), totals)
                for customer, totals in expected.items()
                if actual.get(customer) != totals
            }
            raise AssertionError(
                f"{error}: {applied} of {wanted} orders applied, "
                f"{len(actual)} of {len(expected)} customers; (actual, expected) of "
                f"the {len(wrong)} customers that differ: {wrong}; "
                f"{self.consumer_failures()}"
            ) from None

    def consumer_failures(self) -> str:
        """How often each node's consumers failed, and the last reason."""
        summary = []
        for node in self.nodes:
            failures = node.logs("consumer.failed")
            if failures:
                reason = str(failures[-1].get("exception", "")).strip()
                last = reason.splitlines()[-1] if reason else "?"
                summary.append(f"{node.name}: {len(failures)} failures, last: {last}")
        return "consumer failures: " + ("; ".join(summary) or "none")


def timestamp(record: LogRecord) -> datetime:
    return datetime.fromisoformat(str(record["timestamp"]))


def distributions(node: NodeProcess, *, since: datetime) -> list[LogRecord]:
    """The distributions ``node`` completed from ``since`` on (DEBUG logs)."""
    return node.logs(
        DISTRIBUTION_COMPLETE, predicate=lambda record: timestamp(record) >= since
    )


async def migrated_database(server: ThrowawayPostgres) -> ConnectionInfo:
    database = create_database(server.connection_info, unique_database_name("ec"))
    await migrate(database.conninfo)
    return database


def accepted_since(node: NodeProcess, mark: int) -> set[str]:
    """The partitions ``node``'s subscriber accepted after record ``mark``."""
    return {str(record["source"]) for record in node.logs(ACCEPTING_SOURCE, after=mark)}


def partition_key(stream: str) -> str:
    return source_key(
        CategoryPartition(
            NAMES.category, partition_of(stream, PARTITION_COUNT), PARTITION_COUNT
        )
    )


def saved_partitions(node: NodeProcess) -> set[str]:
    """The partitions whose events ``node`` projected (from its logs: a batch is
    of one partition, which its first stream tells)."""
    return {
        source_key(
            CategoryPartition(
                str(record["category"]),
                partition_of(str(record["first_stream"]), PARTITION_COUNT),
                PARTITION_COUNT,
            )
        )
        for record in node.logs(BATCH_APPLIED)
    }


def applied_orders(node: NodeProcess) -> int:
    """How many orders ``node``'s committed batches held (from its logs)."""
    return sum(int(record["orders"]) for record in node.logs(BATCH_APPLIED))


def error_lines(completed: CompletedNode) -> list[str]:
    return [line for line in completed.stderr if line.strip()]


# -- fixtures ----------------------------------------------------------------


@pytest.fixture
def cluster(
    nodes: NodeProcesses, postgres_database: ConnectionInfo, postgres_pool: Pool
) -> Cluster:
    return Cluster(
        nodes,
        postgres_pool,
        node_environment(
            postgres_database, settings_dir=SETTINGS_DIR, log_level="DEBUG"
        ),
    )


@pytest.fixture
def password_postgres() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres(auth="scram-sha-256")
    try:
        server.start()
    except PostgresUnavailableError as error:
        postgres_unavailable(error)
    try:
        yield server
    finally:
        server.stop()


# -- the cluster at work -----------------------------------------------------


async def test_a_coordinator_and_two_observers_process_every_event(
    cluster: Cluster,
) -> None:
    observers = await cluster.start_observers("observer-1", "observer-2")
    coordinator = await cluster.start_coordinator("coordinator-1")
    held = await cluster.wait_until_spread(observers)

    orders = generate_orders(400, seed=1)
    await cluster.publish(orders)
    await cluster.wait_for_projection(orders)

    for observer in observers:
        # Each observer projected events, only of the partitions it holds.
        assert saved_partitions(observer), f"{observer.name} processed nothing"
        assert saved_partitions(observer) <= held[observer.name]
    # No event was projected twice: the committed batches hold each order once.
    assert sum(applied_orders(o) for o in observers) == len(orders)
    assert not coordinator.logs(BATCH_APPLIED)
    assert all(node.running for node in cluster.nodes)


async def test_a_killed_observers_sources_move_to_the_survivor(
    cluster: Cluster,
) -> None:
    victim, survivor = await cluster.start_observers("observer-1", "observer-2")
    await cluster.start_coordinator("coordinator-1")
    held = await cluster.wait_until_spread([victim, survivor])
    orders = generate_orders(400, seed=2)
    first, rest = orders[:200], orders[200:]

    await cluster.publish(first)
    # Mid-stream: the victim has projected some of its events, and half of the
    # orders are not even published yet.
    await victim.await_log(BATCH_APPLIED, PROCESSING_TIMEOUT)
    marker = survivor.mark()
    victim.kill()
    assert await victim.await_exit(10) == -9
    await cluster.publish(rest)

    # After coordinator_subscriber_max_time_since_last_seen (3 s) the victim's
    # subscriber is ignored and its sources are allocated to the survivor.
    await cluster.wait_for_holdings(
        lambda now: now == {"observer-2": set(ALL_PARTITIONS)},
        timeout=30,
        description="every partition held by observer-2",
    )

    # The survivor's observer starts consuming them at its next synchronisation.
    await wait_until(
        lambda: accepted_since(survivor, marker) >= held["observer-1"],
        timeout=10,
        description=f"observer-2 accepting {sorted(held['observer-1'])}",
    )
    # The survivor starts from the victim's last committed checkpoint, once the
    # victim's claims have expired (consumers.claim_lease).
    await cluster.wait_for_projection(orders)
    # Every partition of the victim's with orders published after the kill.
    published_late = {partition_key(order.customer_id) for order in rest}
    assert saved_partitions(survivor) >= held["observer-1"] & published_late
    assert held["observer-1"] & published_late


async def test_a_terminated_observer_leaves_and_its_sources_move_at_once(
    nodes: NodeProcesses, postgres_database: ConnectionInfo, postgres_pool: Pool
) -> None:
    # Dead subscribers would only be ignored after 30 s and purged after 60 s:
    # a hand-over within seconds proves that the stopping node unregistered.
    cluster = Cluster(
        nodes,
        postgres_pool,
        node_environment(
            postgres_database,
            settings_dir=SETTINGS_DIR,
            log_level="DEBUG",
            settings={
                "broker.coordinator_subscriber_max_time_since_last_seen": 30,
                "broker.subscriber_manager_subscriber_max_age": 60,
            },
        ),
    )
    leaving, staying = await cluster.start_observers("observer-1", "observer-2")
    await cluster.start_coordinator("coordinator-1")
    held = await cluster.wait_until_spread([leaving, staying])
    orders = generate_orders(400, seed=3)

    # Stop it while it works: events keep coming, and it has some in hand.
    publishing = asyncio.create_task(cluster.publish(orders[:300]))
    await leaving.await_log(BATCH_APPLIED, PROCESSING_TIMEOUT)
    marker = staying.mark()
    leaving.terminate()
    assert await leaving.await_exit(STOP_TIMEOUT) == 0
    exited = time.monotonic()
    # It left the cluster: its subscriber row is gone at once.
    assert "observer-1" not in await cluster.subscriber_nodes()
    assert leaving.logs("node.stopped")
    assert not leaving.logs("broker.failed")

    # The coordinator reallocates within a distribution interval (0.3 s) and the
    # other observer picks them up within a synchronisation interval (0.3 s):
    # allow a few seconds for slow machines, far below the 30 s of expiry.
    await cluster.wait_for_holdings(
        lambda now: now == {"observer-2": set(ALL_PARTITIONS)},
        timeout=5,
        description="every partition held by observer-2 within 5 s of the exit",
    )
    await wait_until(
        lambda: accepted_since(staying, marker) >= held["observer-1"],
        timeout=5,
        description=f"observer-2 accepting {sorted(held['observer-1'])}",
    )
    handed_over_after = time.monotonic() - exited
    assert handed_over_after < 5, handed_over_after
    await publishing
    await cluster.publish(orders[300:])
    await cluster.wait_for_projection(orders)
    assert staying.running


async def test_a_standby_coordinator_takes_over_from_a_killed_leader(
    cluster: Cluster,
) -> None:
    victim, survivor = await cluster.start_observers("observer-1", "observer-2")
    leader = await cluster.start_coordinator("coordinator-1")
    await cluster.wait_until_spread([victim, survivor])
    standby = cluster.start("coordinator", "coordinator-2")
    await standby.await_log(COORDINATOR_STARTING, START_TIMEOUT)
    await standby.await_log("node.running", START_TIMEOUT)
    assert not standby.logs(COORDINATOR_RUNNING), "two coordinators lead at once"

    leader.kill()
    assert await leader.await_exit(10) == -9
    # The leader's lock goes with its connection: the standby takes it.
    await standby.await_log(COORDINATOR_RUNNING, 15)

    # Only a leading coordinator moves the sources of an observer that died.
    victim.kill()
    assert await victim.await_exit(10) == -9
    await cluster.wait_for_holdings(
        lambda now: now == {"observer-2": set(ALL_PARTITIONS)},
        timeout=30,
        description="every partition allocated to observer-2 by coordinator-2",
    )
    orders = generate_orders(200, seed=4)
    await cluster.publish(orders)
    await cluster.wait_for_projection(orders)
    assert standby.running
    assert survivor.running


async def test_nodes_survive_a_postgres_restart_and_back_off_meanwhile(
    nodes: NodeProcesses, throwaway_postgres: ThrowawayPostgres
) -> None:
    database = await migrated_database(throwaway_postgres)
    async with AsyncConnectionPool[AsyncConnection[Any]](
        database.conninfo,
        min_size=1,
        open=False,
        check=AsyncConnectionPool.check_connection,
    ) as pool:
        await pool.open(wait=True, timeout=30)
        cluster = Cluster(
            nodes,
            pool,
            node_environment(
                database,
                settings_dir=SETTINGS_DIR,
                settings=RESTART_BACKOFF,
            ),
        )
        observers = await cluster.start_observers("observer-1", "observer-2")
        leader = await cluster.start_coordinator("coordinator-1")
        await cluster.wait_until_spread(observers)
        # A standby coordinator tries to take the lead every 0.2 s, each time on
        # a new connection: during the outage every attempt fails at once, so
        # its broker fails over and over, and only the backoff paces it.
        standby = cluster.start("coordinator", "coordinator-2")
        await standby.await_log(COORDINATOR_STARTING, START_TIMEOUT)
        running = [*observers, leader, standby]
        orders = generate_orders(300, seed=5)
        await cluster.publish(orders[:150])
        await cluster.wait_for_projection(orders[:150])

        marks = {node.name: node.mark() for node in running}
        outage_started = time.monotonic()
        throwaway_postgres.shutdown(mode="fast")
        # The outage: long enough for an immediate restart, then restarts after
        # at most 0.2, 0.4 and 0.8 s (jitter takes up to half off each).
        await asyncio.sleep(3)
        failed_in_outage = {
            node.name: len(node.logs("broker.failed", after=marks[node.name]))
            for node in running
        }
        throwaway_postgres.start()
        outage = time.monotonic() - outage_started

        # Every node still runs.
        assert all(node.running for node in running), running
        # No tight restart loop: a handful of failures, with growing delays.
        assert failed_in_outage["coordinator-2"] >= 2, failed_in_outage
        for name, failures in failed_in_outage.items():
            assert failures < 20, (
                f"{name}: {failures} broker failures in a {outage:.1f}s outage"
            )
        for node in running:
            restarts = node.logs("broker.restarting", after=marks[node.name])
            assert_backed_off(node.name, restarts)
        standby_delays = [
            float(record["delay_seconds"])
            for record in standby.logs("broker.restarting", after=marks[standby.name])
        ]
        assert len(standby_delays) >= 3, standby_delays

        # Events published after the restart are processed; none is lost.
        await cluster.publish(orders[150:])
        await cluster.wait_for_projection(orders)
        assert all(node.running for node in running), running


# The broker's restart backoff assert_backed_off expects (the test profile's is
# shorter: its runs between failures would count as healthy).
RESTART_BACKOFF = {"broker.retry_initial_delay": 0.2, "broker.retry_max_delay": 2}


def assert_backed_off(name: str, restarts: Sequence[LogRecord]) -> None:
    """Each restart waits as its series of consecutive failures says: the first
    (after a healthy run) at once, each further one the doubling delay (from
    broker.retry_initial_delay, 0.2 s, up to broker.retry_max_delay, 2 s) less at
    most half of it as jitter. A failed run that lasted longer than the longest
    delay (waiting on a connection under load, say) counts as healthy and starts a
    new series, so the series is read from each restart's log line."""
    for record in restarts:
        failures = int(record["consecutive_failures"])
        delay = float(record["delay_seconds"])
        longest = 0.0 if failures <= 1 else min(0.2 * 2 ** (failures - 2), 2.0)
        assert longest / 2 <= delay <= longest, (name, failures, delay)
    series = [int(record["consecutive_failures"]) for record in restarts]
    assert any(failures > 1 for failures in series) or len(series) <= 2, (
        f"{name} never backed off: {series}"
    )


async def test_only_one_coordinator_leads_after_a_postgres_restart(
    nodes: NodeProcesses, throwaway_postgres: ThrowawayPostgres
) -> None:
    database = await migrated_database(throwaway_postgres)
    # DEBUG shows each distribution the coordinators make.
    environment = node_environment(
        database, settings_dir=SETTINGS_DIR, log_level="DEBUG"
    )

    def start(node_id: str) -> NodeProcess:
        return nodes.run_node(
            env=environment,
            app=APP,
            role="coordinator",
            node_id=node_id,
            cwd=PROJECT_ROOT,
        )

    first = start("coordinator-1")
    await first.await_log(COORDINATOR_RUNNING, START_TIMEOUT)
    second = start("coordinator-2")
    await second.await_log(COORDINATOR_STARTING, START_TIMEOUT)
    coordinators = [first, second]
    marks = {node.name: node.mark() for node in coordinators}

    # The leader's lock lived in a session of the old server: after the restart
    # nobody holds it, and a coordinator takes it.
    throwaway_postgres.restart()
    await wait_until(
        lambda: any(
            node.logs(COORDINATOR_RUNNING, after=marks[node.name])
            for node in coordinators
        ),
        timeout=20,
        description="a coordinator leading after the restart",
    )
    leader = next(
        node
        for node in coordinators
        if node.logs(COORDINATOR_RUNNING, after=marks[node.name])
    )
    other = second if leader is first else first
    leading_since = timestamp(
        leader.logs(COORDINATOR_RUNNING, after=marks[leader.name])[0]
    )
    await wait_until(
        lambda: len(distributions(leader, since=leading_since)) >= 10,
        timeout=20,
        description=f"10 distributions by {leader.name}",
    )

    # The other one must have stopped distributing (one distribution interval
    # of grace for one in flight): two leaders would allocate sources at once.
    grace = leading_since + timedelta(seconds=0.5)
    assert not distributions(other, since=grace), (
        f"{other.name} still distributes while {leader.name} leads: "
        f"{len(distributions(other, since=grace))} distributions since "
        f"{grace.isoformat()}"
    )
    assert all(node.running for node in coordinators)


async def test_a_node_told_to_stop_during_a_postgres_outage_still_exits(
    nodes: NodeProcesses, throwaway_postgres: ThrowawayPostgres
) -> None:
    database = await migrated_database(throwaway_postgres)
    observer = nodes.run_node(
        env=node_environment(database, settings_dir=SETTINGS_DIR),
        app=APP,
        role="observer",
        node_id="observer-1",
        cwd=PROJECT_ROOT,
    )
    await observer.await_log(OBSERVER_STARTING, START_TIMEOUT)
    mark = observer.mark()

    throwaway_postgres.shutdown(mode="fast")

    # Stop it once it waits for the database: its pool retries connecting, and
    # its broker runs (it is not between a failure and its restart).
    def waiting_for_the_database() -> bool:
        retrying = any("error connecting" in line for line in observer.stderr_lines)
        broker = [
            record["event"]
            for record in observer.logs(after=mark)
            if record["event"] in {"broker.failed", SUBSCRIBER_MANAGER_STARTING}
        ]
        return retrying and (not broker or broker[-1] == SUBSCRIBER_MANAGER_STARTING)

    await wait_until(
        waiting_for_the_database,
        timeout=15,
        description="observer-1 waiting for the database",
    )
    observer.terminate()

    # It cannot unregister its subscriber, but it must not hang: the consumers
    # drain within the stop timeout, and the rest should not take much longer.
    assert await observer.await_exit(STOP_TIMEOUT + 10) == 0


# -- bad input ---------------------------------------------------------------


async def test_a_malformed_order_is_logged_with_its_position_and_skipped(
    cluster: Cluster,
) -> None:
    node = cluster.start("full", "full-1", migrate=True)
    await node.await_log(COORDINATOR_RUNNING, START_TIMEOUT)
    await cluster.wait_for_holdings(
        lambda held: held == {"full-1": set(ALL_PARTITIONS)},
        timeout=START_TIMEOUT,
        description="every partition held by full-1",
    )
    first = generate_orders(100, malformed=3, seed=6)
    later = generate_orders(50, seed=7)
    assert sum(order.malformed for order in first) == 3

    await cluster.publish(first)
    await cluster.wait_for_projection(first)
    rejected = node.logs("demo.order-rejected")
    async with cluster.pool.connection() as connection:
        cursor = await connection.execute(MALFORMED_ORDER_POSITIONS)
        bad_positions = {(str(s), int(p)) for s, p in await cursor.fetchall()}
    assert len(bad_positions) == 3
    assert {(r["stream"], r["position"]) for r in rejected} == bad_positions
    assert len(rejected) == 3
    assert all(record["level"] == "error" for record in rejected)

    # The node goes on with what comes after.
    await cluster.publish(later)
    await cluster.wait_for_projection([*first, *later])
    assert node.running
    assert not node.logs("consumer.failed")


def test_an_unknown_app_ends_with_a_one_line_error() -> None:
    completed = run_to_completion(
        run_command(app="no.such.module:App", role="observer", node_id="n-1"),
        env=node_environment(settings_dir=SETTINGS_DIR),
        cwd=PROJECT_ROOT,
    )

    assert completed.returncode != 0
    lines = error_lines(completed)
    assert len(lines) == 1, lines
    assert lines[0].startswith("eventcomposition: error: ")
    assert "no.such.module" in lines[0]
    assert "Traceback" not in "\n".join(completed.stderr + completed.stdout)


def test_an_invalid_settings_file_ends_with_exit_2_naming_the_file(
    tmp_path: Path,
) -> None:
    settings_file = tmp_path / "test.toml"
    settings_file.write_text('[broker\ncoordinator_distribution_interval = "\n')
    completed = run_to_completion(
        run_command(app=APP, role="observer", node_id="n-1"),
        env=node_environment(settings_dir=tmp_path),
        cwd=PROJECT_ROOT,
    )

    assert completed.returncode == 2
    lines = error_lines(completed)
    assert len(lines) == 1, lines
    assert lines[0].startswith("eventcomposition: error: ")
    assert str(settings_file) in lines[0]
    assert "Traceback" not in "\n".join(completed.stderr)


def test_a_wrong_database_password_ends_quickly_with_a_one_line_error(
    password_postgres: ThrowawayPostgres,
) -> None:
    right = password_postgres.connection_info
    wrong = replace(right, password="not-the-password-4711")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(wrong.conninfo, connect_timeout=5)

    completed = run_to_completion(
        run_command(app=APP, role="observer", node_id="n-1"),
        env=node_environment(wrong, settings_dir=SETTINGS_DIR),
        cwd=PROJECT_ROOT,
        timeout=60,
    )

    assert completed.returncode != 0
    lines = [line for line in error_lines(completed) if not line.startswith("{")]
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith("eventcomposition: error: ")
    assert "password authentication failed" in lines[0]
    output = "\n".join(completed.stderr + completed.stdout)
    assert wrong.password not in output
    assert right.password not in output
    assert "Traceback" not in output
    # No retrying a password: the node gives up at the first refusal.
    assert completed.duration_seconds < 15, completed.duration_seconds
