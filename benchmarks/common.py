"""What every benchmark shares: the machine, statistics, tables, results, PostgreSQL.

Every number a benchmark reports is measured in the same run on the same machine;
``machine_info`` describes that machine and goes into each result file.
"""

import asyncio
import json
import logging
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from itertools import batched
from pathlib import Path
from typing import Any

import psycopg
from logicblocks.event.processing import EventProcessor
from logicblocks.event.store import EventStore, StreamPublishDefinition
from logicblocks.event.types import JsonValue, StoredEvent

from eventcomposition.consumers.partitions import (
    DEFAULT_PARTITION_COUNT,
    CategoryPartition,
    partition_of,
)
from eventcomposition.demo import DemoNames, Order
from eventcomposition.logs import configure_logging
from eventcomposition.schema import migrate
from eventcomposition.testing import (
    ConnectionInfo,
    PostgresUnavailableError,
    ThrowawayPostgres,
    create_database,
    unique_database_name,
)
from eventcomposition.testing.processes import NodeProcess

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SETTINGS_DIR = PROJECT_ROOT / "settings"
DEFAULT_RESULTS_DIR = Path(__file__).resolve().parent / "results"

type Json = dict[str, Any]


# -- statistics ----------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """The spread of repeated measurements: min, median, max of ``count`` values."""

    minimum: float
    median: float
    maximum: float
    count: int

    @classmethod
    def of(cls, values: Iterable[float]) -> "Spread":
        data = sorted(values)
        if not data:
            nan = float("nan")
            return cls(nan, nan, nan, 0)
        return cls(data[0], statistics.median(data), data[-1], len(data))

    def as_json(self) -> Json:
        return {
            "min": self.minimum,
            "median": self.median,
            "max": self.maximum,
            "n": self.count,
        }

    def text(self, fmt: str = ".3f", unit: str = "") -> str:
        if self.count == 0:
            return "n/a"
        return (
            f"{self.minimum:{fmt}} / {self.median:{fmt}} / {self.maximum:{fmt}}{unit}"
        )


# -- output --------------------------------------------------------------------


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table (stays readable in a log, a terminal and the README)."""
    cells = [[str(cell) for cell in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
            + " |"
        )

    rule = "|-" + "-|-".join("-" * w for w in widths) + "-|"
    return "\n".join([f"\n{title}", line(cells[0]), rule, *map(line, cells[1:])])


def say(text: str = "") -> None:
    print(text, flush=True)


def write_results(results_dir: Path, name: str, payload: Json) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return path


# -- the machine -----------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info(postgres_version: str | None = None) -> Json:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "logicblocks_event_store": _version("logicblocks-event-store"),
        "eventcomposition": _version("eventcomposition"),
        "postgres": postgres_version or "not used",
    }


def machine_text(info: Mapping[str, Any]) -> str:
    return (
        f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, "
        f"{info['os']}; Python {info['python']}; logicblocks-event-store "
        f"{info['logicblocks_event_store']}; PostgreSQL {info['postgres']}"
    )


# -- the benchmark run -------------------------------------------------------------


class PostgresUnavailable(Exception):
    """No PostgreSQL server could be started for the PostgreSQL benchmarks."""


@dataclass
class PostgresForBenchmarks:
    """One throwaway PostgreSQL server for the whole run, started on first use.

    It listens on 127.0.0.1 only, with ``fsync``, ``synchronous_commit`` and
    ``full_page_writes`` off (``ThrowawayPostgres``'s settings): the numbers measure
    the software, not the disk.
    """

    server: ThrowawayPostgres | None = None
    failure: str | None = None
    version: str | None = None

    def get(self) -> ThrowawayPostgres:
        if self.failure is not None:
            raise PostgresUnavailable(self.failure)
        if self.server is None:
            try:
                self.server = ThrowawayPostgres().start()
            except PostgresUnavailableError as error:
                self.failure = str(error).splitlines()[0]
                raise PostgresUnavailable(self.failure) from error
            with psycopg.connect(self.server.connection_info.conninfo) as connection:
                row = connection.execute("SHOW server_version").fetchone()
                self.version = str(row[0]) if row else "unknown"
        return self.server

    def run_copy(self, template: ConnectionInfo) -> ConnectionInfo:
        """``checkpointed_copy`` of ``template`` on this server."""
        return checkpointed_copy(self.get().connection_info, template)

    async def new_database(self, *, template: str | None = None) -> ConnectionInfo:
        """A fresh database (migrated, or a copy of ``template``)."""
        admin = self.get().connection_info
        database = create_database(
            admin, unique_database_name("bench"), template=template
        )
        if template is None:
            await migrate(database.conninfo)
        return database

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@dataclass
class BenchContext:
    quick: bool
    results_dir: Path
    postgres: PostgresForBenchmarks = field(default_factory=PostgresForBenchmarks)

    def machine(self) -> Json:
        return machine_info(self.postgres.version)

    def save(self, name: str, payload: Json) -> None:
        payload = {
            "benchmark": name,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": "quick" if self.quick else "full",
            "machine": self.machine(),
            **payload,
        }
        path = write_results(self.results_dir, name, payload)
        say(
            f"results: {path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path}"
        )


def checkpointed_copy(
    admin: ConnectionInfo, template: ConnectionInfo
) -> ConnectionInfo:
    """A new database copied from ``template`` for one measured run, the server
    checkpointed after the copy: copying writes the whole database through the
    write-ahead log, and the checkpoint that follows, spread over minutes, would
    otherwise write it out during the measurement (later runs measured slower than
    the first)."""
    database = create_database(
        admin, unique_database_name(f"{template.dbname}_run"), template=template.dbname
    )
    with psycopg.connect(admin.conninfo, autocommit=True) as connection:
        connection.execute("CHECKPOINT")
    return database


def first_logged(observer: NodeProcess, event: str, key: str) -> dict[int, float]:
    """Per event number, ``key`` of the first ``event`` record of ``observer``'s
    log that lists it in ``numbers`` (the latency benchmarks' applications log
    the numbers of the events each committed batch applied)."""
    found: dict[int, float] = {}
    for record in observer.logs(event):
        for n in record["numbers"]:
            found.setdefault(n, record[key])
    return found


def settle(database: ConnectionInfo) -> None:
    """``VACUUM ANALYZE`` a database just loaded, as autovacuum would soon after a
    bulk load: the planner's statistics and the rows' hint bits are in place
    before anything is measured, rather than set by whichever run comes first (or
    by autovacuum in the middle of one)."""
    with psycopg.connect(database.conninfo, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE")


def quiet_logging() -> None:
    """Warnings and errors only: logicblocks logs every projection save at INFO."""
    configure_logging("WARNING", "console")
    logging.getLogger().setLevel(logging.WARNING)


# -- events ------------------------------------------------------------------------


def partition_key(
    stream: str, names: DemoNames, count: int = DEFAULT_PARTITION_COUNT
) -> str:
    """The key of the partition of the demo's category that holds ``stream``."""
    return CategoryPartition(names.category, partition_of(stream, count), count).key


def batch_partition(
    record: Mapping[str, Any], count: int = DEFAULT_PARTITION_COUNT
) -> str | None:
    """The partition (key) of a ``demo.batch-applied`` log record: a batch is of one
    partition, which its first stream tells."""
    category, stream = record.get("category"), record.get("first_stream")
    if not isinstance(category, str) or not isinstance(stream, str):
        return None
    return CategoryPartition(category, partition_of(stream, count), count).key


def one_stream_per_partition(count: int, prefix: str = "warm") -> list[str]:
    """A stream name in each partition of ``count``, by index."""
    streams: dict[int, str] = {}
    n = 0
    while len(streams) < count:
        name = f"{prefix}-{n}"
        streams.setdefault(partition_of(name, count), name)
        n += 1
    return [streams[index] for index in range(count)]


async def publish_by_category(
    event_store: EventStore,
    orders: Sequence[Order],
    *,
    names: DemoNames,
    batch_size: int = 500,
) -> int:
    """Publish ``orders`` fast: one atomic write per category and batch.

    Each customer's orders keep their order in its stream, as ``publish_orders``
    does, with far fewer transactions (set-up, not what is measured).
    """
    by_category: dict[str, list[Order]] = {}
    for order in orders:
        by_category.setdefault(names.category, []).append(order)
    published = 0
    for category, category_orders in by_category.items():
        for batch in batched(category_orders, batch_size, strict=False):
            streams: dict[str, list[Order]] = {}
            for order in batch:
                streams.setdefault(order.customer_id, []).append(order)
            definitions: dict[str, StreamPublishDefinition[str, JsonValue]] = {
                customer: {"events": [order.event() for order in customer_orders]}
                for customer, customer_orders in streams.items()
            }
            await event_store.category(category=category).publish(streams=definitions)
            published += len(batch)
    return published


class CountingProcessor(EventProcessor[StoredEvent]):
    """Counts events; notes when the first one came and when the target was reached.

    The cheapest processor there is, so that what surrounds it shows.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.first_at: float | None = None
        self.done_at: float | None = None
        self.done = asyncio.Event()

    async def process_event(self, event: StoredEvent[str, JsonValue]) -> None:
        self.count += 1
        if self.first_at is None:
            self.first_at = time.perf_counter()
        if self.count >= self.target and self.done_at is None:
            self.done_at = time.perf_counter()
            self.done.set()


def run_quietly(argv: Sequence[str], *, timeout: float = 120.0) -> str:
    completed = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
        cwd=PROJECT_ROOT,
    )
    return completed.stdout
