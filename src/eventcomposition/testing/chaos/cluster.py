"""The run's cluster: a throwaway PostgreSQL in a namespace of its own, and node
processes (coordinators and observers of ``app.ChaosApp``) each in its own.

Everything it starts it stops on ``close`` (also after a failure): the nodes
(SIGKILL), the server (its folder deleted) and the namespaces.
"""

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ...broker.leadership import leading_coordinator
from ..postgres import (
    ConnectionInfo,
    PostgresServerError,
    PostgresUnavailableError,
    ThrowawayPostgres,
    create_database,
)
from ..processes import NodeProcess, NodeProcesses, node_environment, run_command
from .app import GROUP
from .network import Network, run_in_namespace

APP = "eventcomposition.testing.chaos.app:ChaosApp"
DATABASE = "chaos"
HTTP_PORT = 8080
MAX_CONNECTIONS = 100

type Pool = AsyncConnectionPool[AsyncConnection[Any]]


@dataclass(frozen=True)
class Timings:
    """The cluster's timings (the ``test`` profile's, with these overrides)."""

    claim_lease: float = 3.0
    subscriber_max_unseen: float = 3.0
    distribution: float = 0.2
    synchronisation: float = 0.2
    poll: float = 0.1
    retry_max: float = 1.0
    batch_timeout: float = 10.0
    batch_size: int = 20

    def node_settings(self) -> dict[str, str | int | float]:
        return {
            "consumers.claim_lease": self.claim_lease,
            "consumers.batch_size": self.batch_size,
            "consumers.batch_timeout": self.batch_timeout,
            "consumers.poll_interval": self.poll,
            "consumers.retry_max_delay": self.retry_max,
            "broker.retry_max_delay": self.retry_max,
            "broker.coordinator_subscriber_max_time_since_last_seen": (
                self.subscriber_max_unseen
            ),
            "broker.coordinator_distribution_interval": self.distribution,
            "broker.observer_synchronisation_interval": self.synchronisation,
            "http.enabled": "true",
            "http.host": "127.0.0.1",
            "http.port": HTTP_PORT,
        }


class Cluster:
    """The server, the namespaces and the nodes of one run."""

    def __init__(
        self,
        *,
        coordinators: int,
        observers: int,
        timings: Timings,
        work_dir: Path,
    ) -> None:
        self.coordinators = [f"coordinator-{n}" for n in range(1, coordinators + 1)]
        self.observers = [f"observer-{n}" for n in range(1, observers + 1)]
        self.timings = timings
        self.work_dir = work_dir
        self.network = Network([*self.coordinators, *self.observers])
        self.server = ThrowawayPostgres(
            settings={"listen_addresses": "*", "max_connections": MAX_CONNECTIONS}
        )
        self.nodes = NodeProcesses(log_dir=work_dir / "nodes")
        self.running: dict[str, NodeProcess] = {}
        self._restarts: dict[str, int] = {}

    # -- set-up and tear-down ----------------------------------------------------

    def open(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.network.create()
        self.start_server()
        self._admit_nodes()
        create_database(self.admin_info, DATABASE)

    def _admit_nodes(self) -> None:
        """Let the nodes' addresses in (initdb admits the loopback only)."""
        hba = self.server.data_dir / "pg_hba.conf"
        with hba.open("a", encoding="utf-8") as lines:
            lines.write(f"host all all {self.network.subnet} trust\n")
        with psycopg.connect(self.admin_info.conninfo, autocommit=True) as admin:
            admin.execute("SELECT pg_reload_conf()")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.nodes.close()
        with contextlib.suppress(Exception):
            self.server.stop()
        self.network.close()

    @property
    def admin_info(self) -> ConnectionInfo:
        """The server over its unix socket, which no partition touches."""
        return ConnectionInfo(
            host=str(self.server.data_dir.parent / "sockets"),
            port=self.server.port,
            user="postgres",
        )

    @property
    def database_info(self) -> ConnectionInfo:
        return self.admin_info.for_database(DATABASE)

    # -- the server ------------------------------------------------------------------

    def start_server(self) -> None:
        """Start (or start again) the server inside the database's namespace,
        retrying while a crashed server's last backends are still exiting."""
        deadline = time.monotonic() + 60
        while True:
            try:
                run_in_namespace(self.network.database, self.server.start)
                return
            except PostgresUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def restart_server(self) -> None:
        self.server.shutdown(mode="fast")
        self.start_server()

    def crash_server(self) -> None:
        """SIGKILL the postmaster (its backends exit when they notice)."""
        pid_file = self.server.data_dir / "postmaster.pid"
        pid = int(pid_file.read_text().splitlines()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        # The server is gone: let the throwaway server know (its stop fails).
        with contextlib.suppress(PostgresServerError):
            self.server.shutdown(mode="immediate")

    # -- nodes -------------------------------------------------------------------------

    def node_environment(self, node: str) -> dict[str, str]:
        link = self.network.links[node]
        database = ConnectionInfo(
            host=link.database_address,
            port=self.server.port,
            user="postgres",
            dbname=DATABASE,
        )
        return node_environment(
            database, settings=self.timings.node_settings(), log_level="INFO"
        )

    def start_node(self, node: str) -> NodeProcess:
        role = "coordinator" if node in self.coordinators else "observer"
        count = self._restarts.get(node, 0)
        self._restarts[node] = count + 1
        argv = [
            *self.network.exec_prefix(node),
            *run_command(app=APP, role=role, node_id=node),
        ]
        process = self.nodes.add(
            NodeProcess(
                argv,
                env=self.node_environment(node),
                name=node if count == 0 else f"{node}-{count}",
                cwd=self.work_dir,
            )
        )
        self.running[node] = process
        return process

    def start_all(self) -> None:
        for node in [*self.observers, *self.coordinators]:
            self.start_node(node)

    # -- what the database says ----------------------------------------------------

    async def held_by(self, pool: Pool, node: str) -> tuple[str, ...]:
        """The sources ``node`` holds a live claim on (empty if unknown)."""
        try:
            async with asyncio.timeout(2), pool.connection() as connection:
                cursor = await connection.execute(
                    'SELECT source FROM consumer_claims WHERE "group" = %s '
                    "AND holder_node = %s AND NOT released "
                    "AND lease_expires_at > now() ORDER BY source",
                    (GROUP, node),
                )
                return tuple(str(row[0]) for row in await cursor.fetchall())
        except (psycopg.Error, TimeoutError):
            return ()

    async def leader(self, pool: Pool) -> str | None:
        """The coordinator holding the leadership lock, if any."""
        try:
            async with asyncio.timeout(2), pool.connection() as connection:
                found = await leading_coordinator(connection)
        except (psycopg.Error, TimeoutError):
            return None
        return None if found is None else found.node_id


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _readiness_url() -> str:
    return f"http://127.0.0.1:{HTTP_PORT}/health/ready"


def probe_ready(cluster: Cluster, node: str, timeout: float = 1.0) -> bool:
    """Ask ``node``'s readiness probe, from inside its namespace; no answer
    within ``timeout`` counts as not ready (as a kubelet would count it)."""
    import urllib.error
    import urllib.request

    def ask() -> bool:
        try:
            with urllib.request.urlopen(_readiness_url(), timeout=timeout) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError, TimeoutError):
            return False

    return run_in_namespace(cluster.network.links[node].namespace, ask)
