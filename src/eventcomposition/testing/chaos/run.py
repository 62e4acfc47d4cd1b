"""One fault-injection run: cluster up, events published throughout, the nemesis
at work, then every published event awaited, the history read and checked.

    python -m eventcomposition.testing.chaos --seed 7 --minutes 2

Needs root (network namespaces) and the PostgreSQL binaries the tests use.
"""

import asyncio
import contextlib
import logging
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
import structlog
from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.types import NewEvent
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ...schema import migrate
from .app import CATEGORIES, MIGRATION
from .checker import Report, check
from .cluster import Cluster, Pool, Timings
from .history import (
    DATABASE_FAULTS,
    AllocationWrite,
    Applied,
    CheckpointMove,
    Fault,
    FaultKind,
    History,
    Published,
)
from .nemesis import Nemesis

logger = structlog.get_logger("eventcomposition.chaos")

STREAMS_PER_CATEGORY = 4
PUBLISH_INTERVAL = 0.05
DRAIN_TIMEOUT = 120.0
START_TIMEOUT = 90.0
# Added to every recovery bound: a batch in flight, a poll, a loaded machine.
MARGIN = 3.0


@dataclass(frozen=True)
class RunOptions:
    """What a run does: ``seed`` decides the faults, ``minutes`` how long they
    come, ``kinds`` which."""

    seed: int
    minutes: float = 2.0
    kinds: Sequence[FaultKind] = tuple(FaultKind)
    coordinators: int = 2
    observers: int = 3
    mean_gap: float = 4.0
    timings: Timings = field(default_factory=Timings)
    work_dir: Path | None = None


@dataclass(frozen=True)
class Bounds:
    """The stated recovery bounds, from the cluster's timings (seconds).

    - a node fault (kill, stop, pause, partition of an observer): the sources it
      held are applied again, by another node, within ``node`` of the fault:
      the claim lease or the coordinator's limit on an unseen subscriber
      (whichever is longer), then a distribution, a synchronisation, a poll and
      ``MARGIN``;
    - a fault of the leading coordinator holds up nothing by itself (sources
      stay with their holders), but no source moves while no coordinator leads:
      a fault overlapping it gets ``node`` after it ends (a paused or cut leader
      keeps its lock for a while; both coordinators may be down at once);
    - a database fault (restart, crash, slots exhausted): every source is
      applied again within ``database`` of the server's return: two retry
      backoffs (broker and consumer), the lease and ``MARGIN``;
    - a partitioned node reports not ready within ``not_ready`` of the cut (the
      lease and one probe) and ready again within ``ready_again`` of the heal;
    - while one source of a node is blocked, the node's other sources apply
      each event within ``unblocked`` (a poll and ``MARGIN``): a blocked source
      delays only itself.
    """

    node: float
    database: float
    not_ready: float
    ready_again: float
    unblocked: float

    @classmethod
    def of(cls, timings: Timings) -> "Bounds":
        takeover = (
            max(timings.claim_lease, timings.subscriber_max_unseen)
            + timings.distribution
            + timings.synchronisation
            + timings.poll
        )
        return cls(
            node=takeover + MARGIN,
            database=2 * timings.retry_max + timings.claim_lease + MARGIN,
            not_ready=timings.claim_lease + 1.0,
            ready_again=timings.claim_lease + 2 * timings.retry_max + MARGIN,
            unblocked=timings.poll + MARGIN,
        )

    def of_fault(self, fault: Fault) -> float:
        if fault.kind in DATABASE_FAULTS or fault.kind is FaultKind.EXHAUST:
            return self.database
        if fault.kind is FaultKind.BLOCK:
            return self.unblocked
        if fault.coordinator:
            return self.node + (fault.ended - fault.started)
        return self.node


@dataclass
class Outcome:
    report: Report
    history: History
    bounds: Bounds
    errors: list[str]
    work_dir: Path


async def _publish(
    pool: Pool,
    stop: asyncio.Event,
    seed: int,
    acknowledged: dict[str, Published] | None = None,
) -> int:
    """Publish small batches to random streams until ``stop``; retry through
    outages. Records in ``acknowledged`` each event the server acknowledged.
    Returns how many publish calls failed."""
    choices = random.Random(seed + 1)
    store = EventStore(adapter=PostgresEventStorageAdapter(connection_source=pool))
    failures = 0
    number = 0
    while not stop.is_set():
        category = choices.choice(CATEGORIES)
        stream = f"s{choices.randrange(STREAMS_PER_CATEGORY)}"
        count = choices.randint(1, 3)
        try:
            async with asyncio.timeout(5):
                stored = await store.stream(category=category, stream=stream).publish(
                    events=[
                        NewEvent(name="happened", payload={"n": number + i})
                        for i in range(count)
                    ]
                )
            number += count
            if acknowledged is not None:
                at = time.time()
                for event in stored:
                    acknowledged[event.id] = Published(
                        category, stream, event.position, at
                    )
        except (psycopg.Error, TimeoutError, OSError):
            failures += 1
            await asyncio.sleep(0.2)
        await asyncio.sleep(PUBLISH_INTERVAL)
    return failures


async def _fetch(pool: Pool, query: str, *params: Any) -> list[tuple[Any, ...]]:
    async with pool.connection() as connection:
        cursor = await connection.execute(query, params)
        return list(await cursor.fetchall())


async def _all_applied(pool: Pool) -> bool:
    rows = await _fetch(
        pool,
        "SELECT (SELECT count(*) FROM events WHERE category = ANY(%s)), "
        "(SELECT count(DISTINCT event_id) FROM chaos_applied)",
        CATEGORIES,
    )
    published, applied = rows[0]
    return bool(published == applied)


async def _allocated(pool: Pool, observers: Sequence[str]) -> bool:
    rows = await _fetch(
        pool,
        "SELECT DISTINCT r.node_id FROM subscriptions s JOIN subscribers r "
        'USING ("group", id) WHERE jsonb_array_length(s.event_sources) > 0',
    )
    return {str(row[0]) for row in rows} >= set(observers)


async def _wait(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.Error, TimeoutError):
            if await condition():
                return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"timed out after {seconds:.0f} s waiting for {what}")


_STATE_QUERIES = {
    "claims": "SELECT * FROM consumer_claims ORDER BY source",
    "checkpoints": "SELECT * FROM consumer_checkpoints ORDER BY source",
    "heads": "SELECT category, max(sequence_number) FROM events GROUP BY category "
    "ORDER BY category",
    "subscriptions": 'SELECT * FROM subscriptions ORDER BY "group", id',
    "subscribers": 'SELECT * FROM subscribers ORDER BY "group", id',
    "dead letters": "SELECT * FROM consumer_dead_letters",
    "unapplied": "SELECT e.category, e.stream, e.position, e.sequence_number, e.id "
    "FROM events e LEFT JOIN chaos_applied a ON a.event_id = e.id "
    "WHERE a.event_id IS NULL AND e.category LIKE 'chaos-%%' "
    "ORDER BY e.sequence_number",
}


async def _save_state(pool: Pool, path: Path) -> None:
    """What the cluster's tables say at the end, to understand a failed run."""
    lines = []
    for title, query in _STATE_QUERIES.items():
        lines.append(f"# {title}")
        with contextlib.suppress(psycopg.Error):
            lines += [repr(row) for row in await _fetch(pool, query)]
    await asyncio.to_thread(path.write_text, "\n".join(lines) + "\n", "utf-8")


async def read_history(
    pool: Pool, cluster: Cluster, nemesis: Nemesis, ended_at: float
) -> History:
    """The run's history, as the database and the nemesis recorded it."""
    published = {
        str(event_id): Published(str(category), str(stream), int(position), float(at))
        for event_id, category, stream, position, at in await _fetch(
            pool,
            "SELECT id, category, stream, position, extract(epoch FROM observed_at) "
            "FROM events WHERE category = ANY(%s)",
            CATEGORIES,
        )
    }
    applied = [
        Applied(str(e), str(s), str(st), int(p), str(n), int(ep), int(tx), float(at))
        for e, s, st, p, n, ep, tx, at in await _fetch(
            pool,
            "SELECT event_id, source, stream, position, node, epoch, transaction_id, "
            "extract(epoch FROM applied_at) FROM chaos_applied",
        )
    ]
    checkpoints = [
        CheckpointMove(str(s), None if b is None else int(b), int(a), float(at))
        for s, b, a, at in await _fetch(
            pool,
            "SELECT source, before, after, extract(epoch FROM moved_at) "
            "FROM chaos_checkpoints ORDER BY moved_at",
        )
    ]
    allocations = []
    for address, at, held in await _fetch(
        pool,
        "SELECT host(client_addr), extract(epoch FROM written_at), held_leadership "
        "FROM chaos_allocations WHERE client_addr IS NOT NULL ORDER BY written_at",
    ):
        node = cluster.network.node_of(str(address))
        if node in cluster.coordinators:
            allocations.append(AllocationWrite(node, float(at), bool(held)))
    return History(
        published=published,
        applied=applied,
        checkpoints=checkpoints,
        allocations=allocations,
        faults=list(nemesis.faults),
        readiness=list(nemesis.readiness),
        ended_at=ended_at,
    )


async def run(options: RunOptions) -> Outcome:
    """Run the cluster under the nemesis for ``options.minutes``; check it."""
    work_dir = options.work_dir or Path(tempfile.mkdtemp(prefix="chaos-"))
    cluster = Cluster(
        coordinators=options.coordinators,
        observers=options.observers,
        timings=options.timings,
        work_dir=work_dir,
    )
    bounds = Bounds.of(options.timings)
    try:
        await asyncio.to_thread(cluster.open)
        pool: Pool = AsyncConnectionPool[AsyncConnection[Any]](
            cluster.database_info.conninfo,
            min_size=1,
            max_size=4,
            open=False,
            timeout=5,
        )
        await pool.open(wait=True, timeout=30)
        try:
            await migrate(pool, [MIGRATION])
            cluster.start_all()
            await _wait(
                lambda: _allocated(pool, cluster.observers),
                START_TIMEOUT,
                "every observer allocated sources",
            )
            stop = asyncio.Event()
            nemesis = Nemesis(
                cluster,
                pool,
                seed=options.seed,
                kinds=options.kinds,
                mean_gap=options.mean_gap,
            )
            acknowledged: dict[str, Published] = {}
            publishing = asyncio.create_task(
                _publish(pool, stop, options.seed, acknowledged)
            )
            injecting = asyncio.create_task(nemesis.run(stop))
            await asyncio.sleep(options.minutes * 60)
            stop.set()
            await injecting
            await publishing
            ended_at = time.time()
            errors = list(nemesis.errors)
            try:
                await _wait(
                    lambda: _all_applied(pool),
                    DRAIN_TIMEOUT,
                    "every published event applied",
                )
            except TimeoutError as error:
                errors.append(str(error))
            # Late duplicates (a resumed holder's commit) would come now.
            await asyncio.sleep(options.timings.claim_lease)
            history = await read_history(pool, cluster, nemesis, ended_at)
            history = replace(history, acknowledged=acknowledged)
            if errors:
                await _save_state(pool, work_dir / "final-state.txt")
        finally:
            await pool.close()
    finally:
        await asyncio.to_thread(cluster.close)
    report = check(
        history,
        bounds.of_fault,
        readiness_within=bounds.not_ready,
        ready_again_within=bounds.ready_again,
    )
    (work_dir / "recoveries.txt").write_text(
        "".join(
            f"{r.fault.kind} {r.fault.target} started {r.fault.started:.1f} ended "
            f"{r.fault.ended:.1f} affected {','.join(r.fault.affected) or '-'}: "
            f"{'never' if r.seconds is None else f'{r.seconds:.1f}'} s "
            f"(bound {r.bound:.1f} s)\n"
            for r in report.recoveries
        ),
        encoding="utf-8",
    )
    return Outcome(report, history, bounds, errors, work_dir)


def quiet_logs() -> None:
    """The run's own process logs warnings only (publishing logs every event)."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING)
    )
    # The run's own pool fails through every database fault, as it should.
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    logging.getLogger("psycopg").setLevel(logging.CRITICAL)
