"""Operating real nodes: ``eventcomposition run`` processes on PostgreSQL with their
HTTP server on (``http.enabled``), probed, scraped and stopped from the test.

The application (``tests/component/ledger_app.py``) runs one transactional consumer
that writes a ledger; a switch row in the database makes it fail and recover. How
fast a notification wakes a consumer is for the latency benchmark; here an observer
whose poll intervals are 30 s processing an event within seconds shows that one did.
"""

import asyncio
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.types import JsonValue, NewEvent
from prometheus_client.parser import text_string_to_metric_families
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.testing import ConnectionInfo
from eventcomposition.testing.processes import (
    NodeProcess,
    NodeProcesses,
    node_environment,
    run_to_completion,
)
from eventcomposition.testing.waiting import wait_until

pytestmark = pytest.mark.postgres

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# What tests/component/ledger_app.py declares (node processes import it from
# PROJECT_ROOT; this test's process cannot).
APP = "tests.component.ledger_app:LedgerApp"
GROUP = "ledger"
CATEGORY = "payments"
SET_FAILING = "UPDATE ledger_switch SET failing = %s"
START_TIMEOUT = 60.0
TIMEOUT = 30.0
SOURCE = f"category:{CATEGORY}"
BACKLOG = 30
MAX_LAG = 10
# Far below the observer's poll intervals (30 s): only a wake-up explains an
# event processed this fast.
WOKEN_WITHIN = 3.0

type Pool = AsyncConnectionPool[AsyncConnection[Any]]


def free_port() -> int:
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with closing(socket.socket()) as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
async def pool(postgres_database: ConnectionInfo) -> AsyncIterator[Pool]:
    """A pool on the test's database, with the application's tables created (the
    nodes' ``--migrate`` then finds them applied)."""
    migrated = await asyncio.to_thread(
        run_to_completion,
        [sys.executable, "-m", "eventcomposition", "db", "migrate", "--app", APP],
        env=node_environment(postgres_database),
        cwd=PROJECT_ROOT,
    )
    assert migrated.returncode == 0, migrated.stderr
    async with AsyncConnectionPool[AsyncConnection[Any]](
        postgres_database.conninfo, min_size=1, max_size=4, open=False
    ) as opened:
        yield opened


class Http:
    """The probes of one node's HTTP server."""

    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self._session = session
        self.base = f"http://127.0.0.1:{port}"

    async def get(self, path: str) -> tuple[int, str]:
        async with self._session.get(self.base + path) as response:
            return response.status, await response.text()

    async def json(self, path: str) -> tuple[int, Any]:
        status, text = await self.get(path)
        return status, json.loads(text)

    async def answers(self) -> bool:
        try:
            await self.get("/health/live")
        except aiohttp.ClientConnectionError:
            return False
        return True

    async def metrics(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """Each sample's value by sample name, then by its sorted labels."""
        status, text = await self.get("/metrics")
        assert status == 200
        samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = tuple(sorted(sample.labels.items()))
                samples.setdefault(sample.name, {})[labels] = sample.value
        return samples


@asynccontextmanager
async def http_client(port: int) -> AsyncIterator[Http]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield Http(session, port)


def start_node(
    nodes: NodeProcesses,
    database: ConnectionInfo,
    *,
    node_id: str,
    port: int,
    role: str = "full",
    settings: Mapping[str, str | int | float] | None = None,
) -> NodeProcess:
    env = node_environment(
        database,
        settings={
            "http.enabled": "true",
            "http.port": port,
            **(settings or {}),
        },
    )
    return nodes.run_node(
        app=APP, role=role, node_id=node_id, migrate=True, env=env, cwd=PROJECT_ROOT
    )


async def publish(pool: Pool, amounts: range | list[int]) -> None:
    store = EventStore(adapter=PostgresEventStorageAdapter(connection_source=pool))
    for amount in amounts:
        event: NewEvent[str, JsonValue] = NewEvent(
            name="paid", payload={"amount": amount}
        )
        await store.stream(category=CATEGORY, stream=f"p{amount}").publish(
            events=[event]
        )


async def ledger_rows(pool: Pool) -> int:
    async with pool.connection() as connection:
        cursor = await connection.execute("SELECT count(*) FROM ledger")
        row = await cursor.fetchone()
        return int(row[0]) if row else 0


async def set_failing(pool: Pool, failing: bool) -> None:
    async with pool.connection() as connection:
        await connection.execute(SET_FAILING, (failing,))


def holding(status: Any) -> Any:
    """The node's one holding (group ``ledger``, the payments category), if held."""
    held = [
        source
        for source in status["sources"] or []
        if source["group"] == GROUP and source["source"] == SOURCE
    ]
    return held[0] if held else None


async def test_probes_status_and_metrics_through_a_nodes_life(
    postgres_database: ConnectionInfo, pool: Pool, nodes: NodeProcesses
) -> None:
    await publish(pool, range(1, BACKLOG + 1))
    # The ledger fails from the node's first batch on, so the backlog waits.
    await set_failing(pool, True)
    port = free_port()
    node = start_node(
        nodes,
        postgres_database,
        node_id="operated-1",
        port=port,
        settings={
            "health.max_lag_events": MAX_LAG,
            # A notification wakes the consumer; this bounds the retries after
            # the ledger fails, whose notifications are long gone.
            "consumers.notify_poll_interval": 0.5,
        },
    )
    async with http_client(port) as http:
        await wait_until(
            http.answers, timeout=START_TIMEOUT, description="the HTTP server"
        )
        status, live = await http.json("/health/live")
        assert (status, live["live"]) == (200, True)

        # A failing consumer: not ready, naming the check; still live.
        async def failing_consumer_reported() -> bool:
            status, ready = await http.json("/health/ready")
            return status == 503 and "consumers" in ready["failed"]

        await wait_until(
            failing_consumer_reported,
            timeout=TIMEOUT,
            description="/health/ready to report the failing consumer",
        )
        status, ready = await http.json("/health/ready")
        assert status == 503
        assert ready["ready"] is False
        assert "lag" in ready["failed"]
        assert (await http.get("/health/live"))[0] == 200
        _, node_status = await http.json("/status")
        held = holding(node_status)
        assert held is not None, node_status
        # Before its first checkpoint a source lags by everything up to its head.
        assert held["checkpoint"] is None
        assert held["lag"] == held["head"] + 1 >= BACKLOG
        reason = ready["checks"]["lag"]["reason"]
        assert f"{GROUP} {SOURCE} is {held['lag']} behind" in reason
        samples = await http.metrics()
        lag_key = (("group", GROUP), ("source", SOURCE))
        assert samples["eventcomposition_consumer_lag_events"][lag_key] == held["lag"]
        assert await ledger_rows(pool) == 0

        # Recovery: the backlog drains, lag falls to 0, ready again.
        await set_failing(pool, False)

        async def ready() -> bool:
            return (await http.get("/health/ready"))[0] == 200

        await wait_until(ready, timeout=TIMEOUT, description="/health/ready to be 200")
        await wait_until(
            lambda: _rows_are(pool, BACKLOG),
            timeout=TIMEOUT,
            description="the backlog to be in the ledger",
        )
        _, node_status = await http.json("/status")
        assert node_status["node_id"] == "operated-1"
        assert node_status["role"] == "full"
        assert node_status["status"] == "running"
        assert node_status["services"]["notify-listener"] == "running"
        assert node_status["services"]["event-broker"] == "running"
        held = holding(node_status)
        assert held is not None, node_status
        assert held["lag"] == 0
        assert held["checkpoint"] == held["head"]
        samples = await http.metrics()
        assert samples["eventcomposition_consumer_lag_events"][lag_key] == 0
        assert samples["eventcomposition_sources_held"][(("group", GROUP),)] == 1
        assert "eventcomposition_coordinator_leader" in samples
        assert "eventcomposition_batch_duration_seconds_bucket" in samples

        # A second node on the port this one serves on does not start.
        second = start_node(nodes, postgres_database, node_id="operated-2", port=port)
        assert second.wait(timeout=START_TIMEOUT) != 0
        errors = second.non_json_stderr()
        assert errors == [
            f"eventcomposition: error: cannot serve HTTP on 127.0.0.1:{port}: the "
            "port is already in use; stop what uses it or give this node another "
            "http.port"
        ], second.output_tail()
        assert not second.stdout_lines
        assert (await http.get("/health/live"))[0] == 200

    # A graceful stop: exit 0, the port closed.
    node.terminate()
    assert node.wait(timeout=TIMEOUT) == 0, node.output_tail()
    assert not port_open(port)


async def test_processed_counters_equal_the_ledger(
    postgres_database: ConnectionInfo, pool: Pool, nodes: NodeProcesses
) -> None:
    await publish(pool, range(1, BACKLOG + 1))
    port = free_port()
    node = start_node(nodes, postgres_database, node_id="counted-1", port=port)
    async with http_client(port) as http:
        await wait_until(
            http.answers, timeout=START_TIMEOUT, description="the HTTP server"
        )
        await wait_until(
            lambda: _rows_are(pool, BACKLOG),
            timeout=TIMEOUT,
            description="the backlog to be in the ledger",
        )
        await publish(pool, range(BACKLOG + 1, BACKLOG + 11))
        await wait_until(
            lambda: _rows_are(pool, BACKLOG + 10),
            timeout=TIMEOUT,
            description="the new events to be in the ledger",
        )
        samples = await http.metrics()
    processed = samples.get("eventcomposition_events_processed_total", {})
    assert processed.get((("group", GROUP), ("source", SOURCE))) == await ledger_rows(
        pool
    )
    node.terminate()
    assert node.wait(timeout=TIMEOUT) == 0


async def test_a_notification_wakes_an_observer_that_polls_every_30_seconds(
    postgres_database: ConnectionInfo, pool: Pool, nodes: NodeProcesses
) -> None:
    port = free_port()
    slow_polls = {
        "consumers.poll_interval": 30,
        "consumers.notify_poll_interval": 30,
    }
    observer = start_node(
        nodes,
        postgres_database,
        node_id="observer-1",
        role="observer",
        port=port,
        settings=slow_polls,
    )
    nodes.run_node(
        app=APP,
        role="coordinator",
        node_id="coordinator-1",
        env=node_environment(postgres_database),
        cwd=PROJECT_ROOT,
    )
    async with http_client(port) as http:

        async def holds_the_source() -> bool:
            if not await http.answers():
                return False
            _, status = await http.json("/status")
            return holding(status) is not None

        await wait_until(
            holds_the_source,
            timeout=START_TIMEOUT,
            description="the observer to hold the payments category",
        )
        _, status = await http.json("/status")
        assert status["services"]["notify-listener"] == "running"

        published = time.monotonic()
        await publish(pool, [1])
        await wait_until(
            lambda: _rows_are(pool, 1),
            timeout=WOKEN_WITHIN,
            interval=0.01,
            description="the event to be processed well before the next poll",
        )
        assert time.monotonic() - published < WOKEN_WITHIN
    observer.terminate()
    assert observer.wait(timeout=TIMEOUT) == 0, observer.output_tail()


async def _rows_are(pool: Pool, count: int) -> bool:
    return await ledger_rows(pool) == count
