"""Real ``eventcomposition run`` processes of the sample app on one PostgreSQL database.

Uses the ``NodeProcess`` harness of ``eventcomposition.testing.processes``; reads
who holds what from the ``subscribers`` and ``subscriptions`` tables.
"""

import asyncio
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.consumers import source_key
from eventcomposition.consumers.partitions import source_identifier
from eventcomposition.demo import DemoNames
from eventcomposition.testing import ConnectionInfo
from eventcomposition.testing.processes import (
    LogRecord,
    NodeProcess,
    NodeProcesses,
    node_environment,
)

from .common import PROJECT_ROOT, SETTINGS_DIR

APP = "eventcomposition.containers.demo:DemoContainer"
NAMES = DemoNames()
ALL_PARTITIONS = frozenset(source_key(p) for p in NAMES.partitions())
"""Every partition (by key) of the demo's one category, in the default count."""
START_TIMEOUT = 90.0

HELD_SOURCES = """
    SELECT r.node_id, s.event_sources
    FROM subscriptions s JOIN subscribers r USING ("group", id)
    WHERE s."group" = %s
"""
SUBSCRIBER_NODES = 'SELECT node_id FROM subscribers WHERE "group" = %s'
APPLIED_ORDERS = """
    SELECT coalesce(sum((state->>'order_count')::bigint), 0)
    FROM projections WHERE name = %s
"""

type Pool = AsyncConnectionPool[AsyncConnection[Any]]

# Node processes keep their compiled bytecode out of the work tree, and use it:
# this machine's environment may say PYTHONDONTWRITEBYTECODE, which would make every
# node compile everything it imports on every start.
BYTECODE_CACHE = Path(tempfile.gettempdir()) / "eventcomposition-bench-pycache"


def bytecode_cached(env: Mapping[str, str]) -> dict[str, str]:
    cached = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cached["PYTHONPYCACHEPREFIX"] = str(BYTECODE_CACHE)
    return cached


def cluster_environment(
    database: ConnectionInfo,
    *,
    settings: Mapping[str, str | int | float],
    log_level: str,
) -> dict[str, str]:
    """Development settings on ``database``, plus ``settings`` (dotted keys)."""
    return bytecode_cached(
        node_environment(
            database,
            settings=settings,
            environment="development",
            settings_dir=SETTINGS_DIR,
            log_level=log_level,
            base={k: v for k, v in os.environ.items()},
        )
    )


def timestamp(record: LogRecord) -> float:
    """A log record's time, as ``time.time()`` counts (same clock, same machine)."""
    return datetime.fromisoformat(str(record["timestamp"])).timestamp()


class Cluster:
    def __init__(
        self,
        nodes: NodeProcesses,
        pool: Pool,
        environment: dict[str, str],
        app: str = APP,
    ) -> None:
        self.nodes = nodes
        self.pool = pool
        self.environment = environment
        self.app = app

    def start(self, role: str, node_id: str) -> NodeProcess:
        return self.nodes.run_node(
            env=self.environment,
            app=self.app,
            role=role,
            node_id=node_id,
            cwd=PROJECT_ROOT,
        )

    async def fetch(self, query: str, *params: object) -> list[tuple[Any, ...]]:
        async with self.pool.connection() as connection:
            cursor = await connection.execute(query, params)
            return list(await cursor.fetchall())

    async def subscriber_nodes(self) -> set[str]:
        rows = await self.fetch(SUBSCRIBER_NODES, NAMES.subscriber_group)
        return {str(row[0]) for row in rows}

    async def sources_by_node(self) -> dict[str, set[str]]:
        held: dict[str, set[str]] = {}
        for node_id, sources in await self.fetch(HELD_SOURCES, NAMES.subscriber_group):
            keys = {source_key(source_identifier(source)) for source in sources}
            if keys:
                held.setdefault(str(node_id), set()).update(keys)
        return held

    async def applied_orders(self) -> int:
        rows = await self.fetch(APPLIED_ORDERS, NAMES.projection_name)
        return int(rows[0][0])

    async def wait_subscribed(
        self,
        node_ids: set[str],
        timeout: float = START_TIMEOUT,  # noqa: ASYNC109 - a polling deadline
    ) -> None:
        await until(
            lambda: self._subscribed(node_ids),
            timeout=timeout,
            what=f"subscribers of {sorted(node_ids)}",
        )

    async def _subscribed(self, node_ids: set[str]) -> bool:
        return node_ids <= await self.subscriber_nodes()

    async def wait_holdings(
        self,
        condition: Callable[[dict[str, set[str]]], bool],
        *,
        timeout: float,  # noqa: ASYNC109 - a polling deadline
        what: str,
        interval: float = 0.02,
    ) -> tuple[float, dict[str, set[str]]]:
        """When (``time.time()``) the holdings first met ``condition``, and them."""
        held: dict[str, set[str]] = {}

        async def check() -> bool:
            nonlocal held
            held = await self.sources_by_node()
            return condition(held)

        await until(check, timeout=timeout, what=what, interval=interval)
        return time.time(), held

    async def start_observers(self, *node_ids: str) -> list[NodeProcess]:
        observers = [self.start("observer", node_id) for node_id in node_ids]
        await self.wait_subscribed(set(node_ids))
        return observers


async def until(
    condition: Callable[[], Any],
    *,
    timeout: float,  # noqa: ASYNC109 - a polling deadline
    what: str,
    interval: float = 0.02,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await condition():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


def spread_over(observers: set[str]) -> Callable[[dict[str, set[str]]], bool]:
    def condition(held: dict[str, set[str]]) -> bool:
        return (
            set(held) == observers
            and set().union(*held.values()) == ALL_PARTITIONS
            and sum(len(v) for v in held.values()) == len(ALL_PARTITIONS)
        )

    return condition


async def open_pool(database: ConnectionInfo) -> Pool:
    pool = AsyncConnectionPool[AsyncConnection[Any]](
        database.conninfo, min_size=1, max_size=4, open=False
    )
    await pool.open(wait=True)
    return pool
