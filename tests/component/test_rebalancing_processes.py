"""Rebalancing in a real cluster: observers join and leave while events are
published, and transactional consumers hand their sources over, fenced by claims.

The nodes run the plain-insert application ``rebalance_ledger`` (in this folder):
each applied event is one row naming the node that applied it and the epoch of the
claim its batch committed under.
"""

import asyncio
import json
import signal
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.types import NewEvent
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.cli.cluster import read_status
from eventcomposition.settings import load_settings
from eventcomposition.testing.postgres import ConnectionInfo
from eventcomposition.testing.processes import (
    NodeProcess,
    NodeProcesses,
    node_environment,
    run_to_completion,
)
from eventcomposition.testing.waiting import wait_until

HERE = Path(__file__).resolve().parent
APP = "rebalance_ledger:LedgerContainer"
# As rebalance_ledger declares them.
GROUP = "ledger"
SOURCES = [f"ledger-{number:02d}" for number in range(12)]
STATUS = [sys.executable, "-m", "eventcomposition", "cluster", "status", "--json"]

APPLIED_TABLE = """
    CREATE TABLE rebalance_applied (
        event_id        text                     NOT NULL,
        source          text                     NOT NULL,
        sequence_number bigint                   NOT NULL,
        node_id         text                     NOT NULL,
        epoch           bigint                   NOT NULL,
        applied_at      timestamp with time zone NOT NULL DEFAULT clock_timestamp()
    )
"""
APPLIED = """
    SELECT event_id, source, sequence_number, node_id, epoch, applied_at
    FROM rebalance_applied
"""

START_TIMEOUT = 60.0
SETTLE_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# The node processes run on the test profile's timings.
TIMINGS = load_settings("test").broker
DISTRIBUTION = TIMINGS.coordinator_distribution_interval.total_seconds()
SYNCHRONISATION = TIMINGS.observer_synchronisation_interval.total_seconds()
# One batch here is a few inserts: well under this.
ONE_BATCH = 0.5
BOUND = DISTRIBUTION + SYNCHRONISATION + ONE_BATCH
# Generous for a loaded two-core machine: a hand-over takes two distributions (one
# revokes, the next assigns once the holder released its claim).
JOIN_DEADLINE = 4 * BOUND
LIVE_WITHIN = TIMINGS.coordinator_subscriber_max_time_since_last_seen

type Pool = AsyncConnectionPool[AsyncConnection[Any]]
type Holdings = dict[str, int]


class Publisher:
    """Publishes small batches to every source until stopped; keeps the ids."""

    def __init__(self, pool: Pool) -> None:
        self._store = EventStore(
            adapter=PostgresEventStorageAdapter(connection_source=pool)
        )
        self.published: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._publish())

    async def stop(self) -> None:
        # Not cancelled: a publish cancelled after its commit would go uncounted.
        assert self._task is not None
        self._stopping.set()
        await self._task

    async def _publish(self) -> None:
        round_ = 0
        while not self._stopping.is_set():
            source = SOURCES[round_ % len(SOURCES)]
            stored = await self._store.stream(
                category=source, stream=f"s-{round_ % 5}"
            ).publish(
                events=[
                    NewEvent(name="entry", payload={"n": round_, "k": k})
                    for k in range(3)
                ]
            )
            self.published.update(event.id for event in stored)
            round_ += 1
            await asyncio.sleep(0.01)


def cluster_status(environment: dict[str, str]) -> dict[str, Any]:
    completed = run_to_completion(STATUS, env=environment, cwd=HERE)
    assert completed.returncode == 0, completed.stderr
    document: dict[str, Any] = json.loads("\n".join(completed.stdout))
    return document


def holdings_of(document: dict[str, Any]) -> Holdings:
    held: Counter[str] = Counter()
    for group in document["groups"]:
        if group["group"] == GROUP:
            held.update(holding["node_id"] for holding in group["holdings"])
    return dict(held)


async def wait_for_holdings(
    environment: dict[str, str], expected: Holdings, description: str
) -> dict[str, Any]:
    """Wait until ``cluster status --json`` shows ``expected``, nothing moving."""
    document: dict[str, Any] = {}

    async def shown() -> bool:
        nonlocal document
        document = await asyncio.to_thread(cluster_status, environment)
        [group] = [g for g in document["groups"] if g["group"] == GROUP] or [{}]
        return holdings_of(document) == expected and group.get("moving") == []

    try:
        await wait_until(shown, timeout=SETTLE_TIMEOUT, description=description)
    except AssertionError as error:
        raise AssertionError(f"{error}; last status: {document}") from None
    return document


async def first_heartbeat(pool: Pool, node_id: str) -> datetime:
    """When ``node_id``'s subscriber first shows in the subscribers table."""
    seen: datetime | None = None

    async def registered() -> bool:
        nonlocal seen
        async with pool.connection() as connection:
            cursor = await connection.execute(
                "SELECT 1 FROM subscribers WHERE node_id = %s", [node_id]
            )
            if await cursor.fetchone() is None:
                return False
        seen = datetime.now(UTC)
        return True

    await wait_until(
        registered,
        timeout=START_TIMEOUT,
        interval=0.01,
        description=f"a first heartbeat of {node_id}",
    )
    assert seen is not None
    return seen


async def when_holding(
    pool: Pool, condition: Callable[[Holdings], bool], description: str
) -> datetime:
    """When the cluster's status (read as ``cluster status`` reads it, in process,
    to time it closely) first satisfies ``condition``."""
    at: datetime | None = None

    async def holds() -> bool:
        nonlocal at
        status = await read_status(pool, "test", LIVE_WITHIN)
        held: Counter[str] = Counter()
        for group in status.groups:
            if group.name == GROUP:
                held.update(holding.node_id for holding in group.holdings)
        at = status.at
        return condition(dict(held))

    await wait_until(
        holds, timeout=SETTLE_TIMEOUT, interval=0.02, description=description
    )
    assert at is not None
    return at


async def test_observers_join_and_leave_and_every_event_is_applied_once(
    postgres_database: ConnectionInfo, postgres_pool: Pool
) -> None:
    async with postgres_pool.connection() as connection:
        await connection.execute(APPLIED_TABLE)
    environment = node_environment(postgres_database)
    publisher = Publisher(postgres_pool)

    with NodeProcesses() as nodes:

        def start(role: str, node_id: str) -> NodeProcess:
            return nodes.run_node(
                env=environment, app=APP, role=role, node_id=node_id, cwd=HERE
            )

        start("coordinator", "coordinator-1")
        publisher.start()
        observers = {name: start("observer", name) for name in ("obs-1", "obs-2")}
        await wait_for_holdings(
            environment, {"obs-1": 6, "obs-2": 6}, "two observers holding 6 each"
        )

        # A third joins a running cluster: a fair share comes to it.
        observers["obs-3"] = start("observer", "obs-3")
        heartbeat = await first_heartbeat(postgres_pool, "obs-3")
        held_at = await when_holding(
            postgres_pool,
            lambda held: held.get("obs-3") == 4,
            "obs-3 holding 4 sources",
        )
        join_seconds = (held_at - heartbeat).total_seconds()
        assert join_seconds <= JOIN_DEADLINE, (
            f"obs-3 held its share {join_seconds:.2f}s after its first heartbeat; "
            f"bound {BOUND:.2f}s, allowed {JOIN_DEADLINE:.2f}s"
        )
        await wait_for_holdings(
            environment, {"obs-1": 4, "obs-2": 4, "obs-3": 4}, "4 sources each"
        )

        observers["obs-4"] = start("observer", "obs-4")
        await wait_for_holdings(
            environment,
            {"obs-1": 3, "obs-2": 3, "obs-3": 3, "obs-4": 3},
            "3 sources each",
        )

        # One leaves: its sources spread over the rest.
        leaving = observers.pop("obs-1")
        leaving.send_signal(signal.SIGTERM)
        assert await leaving.await_exit(STOP_TIMEOUT) == 0, leaving.output_tail()
        await wait_for_holdings(
            environment,
            {"obs-2": 4, "obs-3": 4, "obs-4": 4},
            "obs-1's sources spread over the rest",
        )

        await publisher.stop()
        await wait_until(
            lambda: applied_count(postgres_pool, len(publisher.published)),
            timeout=SETTLE_TIMEOUT,
            description=f"all {len(publisher.published)} published events applied",
        )
        for observer in observers.values():
            observer.send_signal(signal.SIGTERM)
        for observer in observers.values():
            assert await observer.await_exit(STOP_TIMEOUT) == 0, observer.output_tail()

    async with postgres_pool.connection() as connection:
        rows = await (await connection.execute(APPLIED)).fetchall()

    # Every event applied exactly once.
    applied = Counter(row[0] for row in rows)
    assert [event_id for event_id, times in applied.items() if times > 1] == []
    assert set(applied) == publisher.published
    # Each claim epoch of a source belongs to one node, and a source's epochs only
    # grow, in the order of its events and in time: no two nodes committed for a
    # source at once.
    nodes_of: dict[tuple[str, int], set[str]] = defaultdict(set)
    by_source: dict[str, list[tuple[int, datetime, int]]] = defaultdict(list)
    for _, source, sequence_number, node_id, epoch, applied_at in rows:
        nodes_of[(source, epoch)].add(node_id)
        by_source[source].append((sequence_number, applied_at, epoch))
    assert {key: nodes for key, nodes in nodes_of.items() if len(nodes) > 1} == {}
    for source, entries in by_source.items():
        in_event_order = [epoch for _, _, epoch in sorted(entries)]
        in_time_order = [epoch for _, _, epoch in sorted(entries, key=lambda e: e[1])]
        assert in_event_order == sorted(in_event_order), source
        assert in_time_order == sorted(in_time_order), source
    # The sources did change hands, under new epochs.
    handed_over = {source for source, epoch in nodes_of if epoch > 1}
    assert len(handed_over) >= 6, sorted(nodes_of)


async def applied_count(pool: Pool, expected: int) -> bool:
    async with pool.connection() as connection:
        cursor = await connection.execute(
            "SELECT count(DISTINCT event_id) FROM rebalance_applied"
        )
        row = await cursor.fetchone()
    return row is not None and row[0] >= expected
