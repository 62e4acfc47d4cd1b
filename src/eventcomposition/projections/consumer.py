"""The consumer of a versioned projection: the live version, and a rebuild beside it.

A ``VersionedConsumer`` is one subscriber of the projection's group: the broker
allocates it the group's sources as to any subscriber. For each source it holds, it
runs a transactional consumer of the live version (polled by the runtime like any
consumer) and, while a rebuild runs, one of the building version (on a thread of
its own, with larger batches, its sources at once: see ``threads``). The rebuild is
thus spread over the observers exactly as the live work is, with its own claims,
checkpoints and dead letters.

Every second or so (``refresh_interval``) it reads the group's versions: it prepares
a version a command asked for (its schema and the application's migrations), starts
or stops its rebuild, and, once the building version has caught up, attempts the
swap (``ProjectionCatalog.swap``). After a swap the rebuild's thread lets its
sources go and a live consumer of the new version takes them on; the retired
version's consumer, fenced by the swap, is dropped.
"""

import asyncio
import contextlib
import math
import os
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import structlog
from logicblocks.event.processing.consumers import EventSubscriptionConsumer
from logicblocks.event.sources import EventSource
from logicblocks.event.store import EventStore
from logicblocks.event.types import EventSourceIdentifier, StoredEvent

from ..consumers.batch import BatchProcessor, Transaction
from ..consumers.policies import PoisonOrder, PoisonPolicy
from ..consumers.postgres import PostgresCheckpointStore, PostgresEventReader
from ..consumers.stores import CheckpointStore
from ..consumers.transactional import (
    DEFAULT_BATCH_TIMEOUT,
    DEFAULT_CATCH_UP_BATCH_SIZE,
    DEFAULT_CONCURRENT_BATCHES,
    TransactionalConsumer,
    make_transactional_consumer,
)
from ..metrics import NodeMetrics
from ..retry import Backoff
from ..schema.application import Migration, MigrationDeclaration, checked_migrations
from .catalog import Pool, ProjectionCatalog
from .threads import RebuildThread
from .trailing import TrailingReader
from .versions import (
    ProjectionError,
    ProjectionVersion,
    RebuildProgress,
    VersionState,
    building_of,
    check_schema_name,
    expired,
    live_of,
    rebuild_progress,
    stable_schema_name,
)
from .yielding import LiveWork, not_yielding

logger = structlog.get_logger("eventcomposition.projections")

DEFAULT_REBUILD_BATCH_SIZE = 5000
"""Events per batch while rebuilding, unless a projection says otherwise."""

REBUILD_CONCURRENT_BATCHES = 2
"""A rebuild's batches in flight at once on a node: two keep the database reading
and writing one while Python decodes and applies the other; more only add
statements for the live version's to queue behind at the database."""

SWAP_TRIES = 20
"""Swaps tried without waiting (given up at once when the rebuild is behind the
frozen live version) before one catches up with the live version frozen."""


@dataclass(frozen=True)
class VersionedProjection:
    """What an application declares of a projection that can be rebuilt.

    - ``group``: the subscriber group (version 1 keeps its checkpoints under this
      name; version N uses ``group@vN``).
    - ``processor_for``: the processor of a version, given its number; return the
      same processor for every version, or a changed one from some version on.
      A rebuild calls its processor on a thread of its own (``threads``): it must
      keep no asyncio objects tied to the node's event loop.
    - ``migrations``: the application's migrations of the projection's tables, run
      in each new version's own schema (first on the search_path), so they use
      unqualified table names.
    - ``stable_schema``: where readers find the live version's tables (as views);
      by default the group's name as an identifier (see ``stable_schema_name``).
    - ``retired_grace``: how long a retired version is kept after a swap before a
      node drops it; None keeps it until ``projections drop``.
    - ``rebuild_batch_size``: events per batch while rebuilding (catch-up reads
      fewer, larger batches than live processing).
    """

    group: str
    processor_for: Callable[[int], BatchProcessor]
    migrations: Sequence[MigrationDeclaration] = ()
    stable_schema: str | None = None
    retired_grace: timedelta | None = None
    rebuild_batch_size: int = DEFAULT_REBUILD_BATCH_SIZE

    @property
    def schema(self) -> str:
        if self.stable_schema is None:
            return stable_schema_name(self.group)
        return check_schema_name(self.stable_schema)


class VersionProcessor(BatchProcessor):
    """Runs a version's processor with the version's schema first on the batch
    transaction's search_path (``SET LOCAL``), and ``transaction.rebuilding`` set."""

    def __init__(self, inner: BatchProcessor, schema: str, *, rebuilding: bool) -> None:
        self.inner = inner
        self.schema = schema
        self.rebuilding = rebuilding

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        transaction.rebuilding = self.rebuilding
        await transaction.connection.execute(
            "SELECT set_config('search_path', %s || ', ' || "
            "current_setting('search_path'), true)",
            [f'"{self.schema}"'],
        )
        await self.inner.process_batch(events, transaction)


type ConsumerFactory = Callable[
    [str, BatchProcessor, Rebuilding | None], TransactionalConsumer
]
"""Makes the transactional consumer of a checkpoint group, given its processor and,
for a rebuild, what it needs (larger batches, its sources consumed at once, reading
only what the live version applied); None for a live version's consumer."""


@dataclass(frozen=True)
class Rebuilding:
    """What a rebuild's consumer works with: its thread's ``pool``, and the
    checkpoint group of the live version it trails (``live_group``)."""

    pool: Pool
    live_group: Callable[[], str]


@dataclass
class _Running:
    version: ProjectionVersion
    consumer: TransactionalConsumer
    processor: VersionProcessor


@dataclass
class _Building:
    version: ProjectionVersion
    runner: RebuildThread


class VersionedConsumer(EventSubscriptionConsumer[StoredEvent]):
    """A subscriber of a versioned projection's group (see the module's text).

    Register it like any subscription consumer; it offers ``release_claims`` and
    ``consume_categories`` as transactional consumers do.
    """

    def __init__(
        self,
        *,
        projection: VersionedProjection,
        catalog: ProjectionCatalog,
        id: str,
        subscription_requests: Sequence[EventSourceIdentifier],
        make_consumer: ConsumerFactory,
        refresh_interval: timedelta = timedelta(seconds=1),
        rebuild_pause: timedelta = timedelta(milliseconds=100),
        swap_timeout: timedelta = timedelta(seconds=5),
        swap_within: int = 500,
        rebuild_yield: timedelta = timedelta(milliseconds=50),
        metrics: NodeMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            group=projection.group,
            id=id,
            subscription_requests=list(subscription_requests),
            delegate_factory=_no_delegates,
        )
        self._projection = projection
        self._schema = projection.schema
        self._migrations: list[Migration] = checked_migrations(projection.migrations)
        self._catalog = catalog
        self._make_consumer = make_consumer
        self._refresh_every = refresh_interval.total_seconds()
        self._rebuild_pause = rebuild_pause.total_seconds()
        self._swap_timeout = swap_timeout
        self._swap_within = swap_within
        self._rebuild_yield = rebuild_yield.total_seconds()
        self._live_work = LiveWork()
        self._swapped = False
        # Rebuild threads of versions swapped in: their claims released, their
        # threads still ending.
        self._retiring: list[RebuildThread] = []
        # Whether the rebuild's checkpoints moved since the last look.
        self._building_total = 0
        self._advanced = False
        self._metrics = metrics or NodeMetrics()
        self._clock = clock
        self._allocated: dict[EventSourceIdentifier, EventSource[Any, Any]] = {}
        self._live: _Running | None = None
        self._building: _Building | None = None
        self._refreshed_at = -math.inf
        self._progress: RebuildProgress | None = None
        self._backoff = Backoff(
            initial=timedelta(milliseconds=200), maximum=timedelta(seconds=10)
        )
        self._log = logger.bind(subscriber=f"{projection.group}/{id}")

    # -- what others may read ----------------------------------------------------

    @property
    def projection(self) -> VersionedProjection:
        return self._projection

    @property
    def catalog(self) -> ProjectionCatalog:
        return self._catalog

    @property
    def sources(self) -> tuple[EventSourceIdentifier, ...]:
        return tuple(self._allocated)

    @property
    def live_version(self) -> int | None:
        return self._live.version.version if self._live else None

    @property
    def building_version(self) -> int | None:
        return self._building.version.version if self._building else None

    @property
    def live_consumer(self) -> TransactionalConsumer | None:
        return self._live.consumer if self._live else None

    @property
    def checkpoint_groups(self) -> tuple[str, ...]:
        """Where the live version's checkpoints are (``group`` for version 1,
        ``group@vN`` after a swap), for lag and readiness. A running rebuild is
        reported by ``rebuild_status`` instead, so that its lag, large by nature,
        never makes the node look unready."""
        if self._live is None:
            return (self._projection.group,)
        return (self._live.version.checkpoint_group,)

    def rebuild_status(self) -> dict[str, object] | None:
        """The running rebuild as this node last measured it; None when none runs."""
        if self._building is None:
            return None
        if self._progress is None:
            return {
                "group": self._projection.group,
                "version": self._building.version.version,
                "progress": None,
            }
        return self._progress.as_json()

    async def version_consumers(self) -> dict[str, TransactionalConsumer]:
        """A consumer of each live or building version, by checkpoint group, with
        the version's processor (its schema first on the search_path): to deliver
        the version's dead letters again. They hold no sources and never poll."""
        found = {}
        for version in await self._catalog.versions(self._projection.group):
            if version.state not in (VersionState.LIVE, VersionState.BUILDING):
                continue
            processor = VersionProcessor(
                self._projection.processor_for(version.version),
                version.schema_name,
                rebuilding=version.state is VersionState.BUILDING,
            )
            found[version.checkpoint_group] = self._make_consumer(
                version.checkpoint_group, processor, None
            )
        return found

    # -- allocation ----------------------------------------------------------------

    async def accept(self, source: EventSource[EventSourceIdentifier, Any]) -> None:
        self._allocated[source.identifier] = source
        if self._live is not None:
            await self._live.consumer.accept(source)
        if self._building is not None:
            await self._building.runner.accept(source)

    async def withdraw(self, source: EventSource[EventSourceIdentifier, Any]) -> None:
        self._allocated.pop(source.identifier, None)
        if self._live is not None:
            await self._live.consumer.withdraw(source)
        if self._building is not None:
            await self._building.runner.withdraw(source)

    async def release_claims(self) -> None:
        """Stop the rebuild and release every claim (a node stopping)."""
        building, self._building = self._building, None
        if building is not None:
            await building.runner.stop()
        await self._end_retired()
        if self._live is not None:
            await self._live.consumer.release_claims()

    # -- consumption ----------------------------------------------------------------

    async def consume_all(self) -> None:
        if await self._before_poll():
            return
        if self._live is not None:
            await self._poll_live(self._live.consumer.consume_all())
        await self._after_poll()

    async def consume_categories(self, categories: frozenset[str]) -> None:
        if await self._before_poll():
            return
        if self._live is not None:
            await self._poll_live(self._live.consumer.consume_categories(categories))
        await self._after_poll()

    async def poll(
        self, categories: frozenset[str] | None, stop_waiting: asyncio.Event
    ) -> None:
        """A poll of the live version whose sources progress on their own (see
        ``TransactionalConsumer.poll``): a blocked source of the live version
        holds up only itself."""
        if await self._before_poll():
            return
        if self._live is not None:
            await self._poll_live(self._live.consumer.poll(categories, stop_waiting))
        await self._after_poll()

    async def _before_poll(self) -> bool:
        """Follow a swap this node's rebuild made since the last poll before
        anything else (no batch of the retired version is tried, to fail its
        fence), then refresh if due. True when it followed a swap: every source
        of the new live version has been polled."""
        followed = await self._after_swap()
        await self._refresh_if_due()
        return followed

    async def _after_poll(self) -> None:
        await self._after_swap()
        await self._end_retired()

    async def _end_retired(self) -> None:
        """Wait for the threads of rebuilds swapped in to end (their claims are
        already released: see ``_follow_live``)."""
        while self._retiring:
            await self._retiring.pop().stop()

    async def _poll_live(self, poll: Coroutine[Any, Any, None]) -> None:
        """Run a poll of the live version, the rebuild giving way meanwhile. A
        claim lost during it while a rebuild runs may be the swap's fence (the
        rebuild's thread may not have said so yet): follow at once."""
        live = self._live
        assert live is not None
        held = len(live.consumer.claimed_sources)
        try:
            with self._live_work.poll():
                await poll
        finally:
            if self._building is not None and len(live.consumer.claimed_sources) < held:
                self._swapped = True

    def next_poll_within(self) -> timedelta | None:
        """At once after this node's rebuild swapped in (the new live version
        takes over, see ``_after_swap``); else as the live version's consumer
        asks (events waiting behind the visibility horizon)."""
        if self._swapped:
            return timedelta(0)
        if self._live is None:
            return None
        return self._live.consumer.next_poll_within()

    async def _after_swap(self) -> bool:
        """Once this node's rebuild has swapped in (or a claim was lost while a
        rebuild runs): follow at once, and poll every source of the live version.
        The old version's batch that the swap froze was rolled back (its claim
        fenced), and its events' notifications are spent: without this they
        would wait for the next safety-net poll. True when it did."""
        if not self._swapped:
            return False
        self._swapped = False
        await self.refresh()
        if self._live is not None:
            with self._live_work.poll():
                await self._live.consumer.consume_all()
        await self._end_retired()
        return True

    async def _refresh_if_due(self) -> None:
        if self._clock() - self._refreshed_at < self._refresh_every:
            return
        await self.refresh()

    async def refresh(self) -> None:
        """Read the group's versions and follow them (see the module's text)."""
        if self._live is None:
            await self._catalog.ensure_initial(
                self._projection.group, self._schema, self._migrations
            )
        versions = await self._catalog.versions(self._projection.group)
        self._refreshed_at = self._clock()
        live, building = live_of(versions), building_of(versions)
        if live is not None:
            await self._follow_live(live)
        await self._follow_building(building)
        for version in expired(
            versions, self._projection.retired_grace, datetime.now(UTC)
        ):
            with contextlib.suppress(ProjectionError):
                await self._catalog.drop(version.group, version.version)
                await self._log.ainfo(
                    "projection.retired-version-dropped", version=version.version
                )

    async def _follow_live(self, live: ProjectionVersion) -> None:
        if self._live is not None and self._live.version.version == live.version:
            return
        old = self._live
        if (
            self._building is not None
            and self._building.version.version == live.version
        ):
            # Swapped in: the rebuild's thread lets its sources go, and this
            # loop's consumer of the version claims them as the live one.
            promoted, self._building = self._building, None
            self._progress = None
            await promoted.runner.let_go()
            self._retiring.append(promoted.runner)
        self._live = await self._start(live)
        if old is not None:
            await old.consumer.release_claims()
        await self._log.ainfo("projection.live-version", version=live.version)

    async def _follow_building(self, building: ProjectionVersion | None) -> None:
        running = self._building
        if running is not None and (
            building is None or building.version != running.version.version
        ):
            self._building = None
            self._progress = None
            await running.runner.stop()
            await self._log.ainfo(
                "projection.rebuild-stopped", version=running.version.version
            )
        if building is None or self._building is not None:
            return
        if not building.prepared:
            try:
                building = await self._catalog.prepare(building, self._migrations)
            except Exception as error:
                await self._log.aerror(
                    "projection.prepare-failed",
                    version=building.version,
                    error=str(error),
                )
                return
        if not building.prepared:
            return
        self._building = await self._start_rebuild(building)
        await self._log.ainfo("projection.rebuild-started", version=building.version)

    async def _start(self, version: ProjectionVersion) -> _Running:
        processor = VersionProcessor(
            self._projection.processor_for(version.version),
            version.schema_name,
            rebuilding=False,
        )
        consumer = self._make_consumer(version.checkpoint_group, processor, None)
        for source in list(self._allocated.values()):
            await consumer.accept(source)
        return _Running(version=version, consumer=consumer, processor=processor)

    def _live_group(self) -> str:
        live = self._live
        if live is None:
            raise ProjectionError("a rebuild runs only beside a live version")
        return live.version.checkpoint_group

    async def _start_rebuild(self, version: ProjectionVersion) -> _Building:
        processor = VersionProcessor(
            self._projection.processor_for(version.version),
            version.schema_name,
            rebuilding=True,
        )

        def make_consumer(pool: Pool) -> TransactionalConsumer:
            return self._make_consumer(
                version.checkpoint_group,
                processor,
                Rebuilding(pool=pool, live_group=self._live_group),
            )

        async def work(
            consumer: TransactionalConsumer, catalog: ProjectionCatalog
        ) -> None:
            await self._rebuild(version, consumer, catalog)

        conninfo = self._catalog.pool.conninfo
        if not isinstance(conninfo, str):
            raise ProjectionError(
                "a rebuild opens its own connections: give the node's connection "
                "pool a conninfo string, not a callable"
            )
        runner = RebuildThread(
            name=f"rebuild {version.checkpoint_group}",
            conninfo=conninfo,
            make_consumer=make_consumer,
            work=work,
            live=self._live_work,
            yield_longest=self._rebuild_yield,
        )
        await runner.start(list(self._allocated.values()))
        return _Building(version=version, runner=runner)

    # -- the rebuild ------------------------------------------------------------------

    async def _rebuild(
        self,
        version: ProjectionVersion,
        consumer: TransactionalConsumer,
        catalog: ProjectionCatalog,
    ) -> None:
        """Consume the building version's sources until stopped; attempt the swap
        whenever it is close to the live version. Runs on the rebuild's thread,
        with that thread's ``consumer`` and ``catalog``."""
        failures = 0
        behind = 0  # swaps in a row that found the rebuild behind
        while True:
            try:
                await consumer.consume_all()
                pause = self._rebuild_pause
                if await self._close_to_live(version, catalog):
                    # The swap freezes the live version (its batches wait). The
                    # rebuild has just read up to the head, so it is usually at
                    # least as far: the swap then waits for nothing. When it is
                    # not, the swap gives up at once and the rebuild catches up
                    # again before the next try, the live version going on
                    # meanwhile; only after SWAP_TRIES tries does a swap catch
                    # up with the live version frozen (other nodes' shares, a
                    # live version as fast as the rebuild).
                    patient = behind >= SWAP_TRIES
                    with not_yielding():
                        swapped = await catalog.swap(
                            version.group,
                            version.version,
                            catch_up=consumer.consume_all if patient else None,
                            within=self._swap_timeout if patient else timedelta(0),
                        )
                    if swapped:
                        self._refreshed_at = -math.inf  # follow at the next poll
                        self._swapped = True
                        self._metrics.rebuild_progressed(
                            version.group, version.version, 1.0
                        )
                        return  # the thread releases the claims, for the live one
                    behind = 0 if patient else behind + 1
                    await self._log.adebug(
                        "projection.swap-deferred", tries=behind, waited=patient
                    )
                    if not patient:
                        pause = 0.0
                elif self._advanced:
                    pause = 0.0  # applied events and still behind: go on
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures += 1
                pause = self._backoff.delay(failures).total_seconds()
                await self._log.awarning(
                    "projection.rebuild-failed",
                    version=version.version,
                    error=f"{type(error).__name__}: {error}",
                    retry_in_seconds=pause,
                )
            await asyncio.sleep(pause)

    async def _close_to_live(
        self, version: ProjectionVersion, catalog: ProjectionCatalog
    ) -> bool:
        live = self._live
        if live is None:
            self._advanced = False
            return False
        live_positions = await catalog.positions(live.version.checkpoint_group)
        building_positions = await catalog.positions(version.checkpoint_group)
        total = sum(building_positions.values())
        self._advanced, self._building_total = total > self._building_total, total
        self._progress = rebuild_progress(
            live.version, version, live_positions, building_positions
        )
        self._metrics.rebuild_progressed(
            version.group, version.version, self._progress.progress
        )
        # The swap freezes the live version while the rebuild catches up the
        # rest: attempt it only when that rest is small.
        return self._progress.behind <= self._swap_within


def _no_delegates(source: EventSource[EventSourceIdentifier, Any]) -> Any:
    raise AssertionError("a VersionedConsumer keeps no delegate consumers")


def make_versioned_consumer(
    *,
    event_store: EventStore,
    checkpoint_store: CheckpointStore,
    projection: VersionedProjection,
    subscription_requests: Sequence[EventSourceIdentifier],
    batch_size: int = 500,
    catch_up_batch_size: int | None = DEFAULT_CATCH_UP_BATCH_SIZE,
    subscriber_id: str | None = None,
    node_id: str | None = None,
    claim_lease: timedelta = timedelta(seconds=10),
    on_poison: PoisonPolicy | str = PoisonPolicy.PARK,
    poison_attempts: int = 3,
    poison_order: PoisonOrder | str = PoisonOrder.STREAM,
    batch_timeout: timedelta | None = DEFAULT_BATCH_TIMEOUT,
    read_ahead: bool = False,
    concurrent_batches: int | None = DEFAULT_CONCURRENT_BATCHES,
    refresh_interval: timedelta = timedelta(seconds=1),
    swap_timeout: timedelta = timedelta(seconds=5),
    metrics: NodeMetrics | None = None,
) -> VersionedConsumer:
    """A subscriber of ``projection``'s group over ``subscription_requests``, whose
    versions' transactional consumers share this node's settings (lease, poison
    policy, metrics); PostgreSQL only (versions live in schemas)."""
    if not isinstance(checkpoint_store, PostgresCheckpointStore):
        raise ProjectionError(
            "versioned projections keep their versions in PostgreSQL schemas: "
            "set storage.type = postgres"
        )
    if projection.rebuild_batch_size < 1:
        raise ValueError(
            f"rebuild_batch_size must be at least 1, got {projection.rebuild_batch_size}"
        )
    subscriber = subscriber_id or uuid4().hex
    node = node_id or f"{socket.gethostname()}-{os.getpid()}"
    requests = list(subscription_requests)

    def make_consumer(
        group: str, processor: BatchProcessor, rebuilding: Rebuilding | None
    ) -> TransactionalConsumer:
        store = (
            checkpoint_store
            if rebuilding is None
            else PostgresCheckpointStore(rebuilding.pool)
        )
        return make_transactional_consumer(
            event_store=event_store,
            checkpoint_store=store,
            event_reader=(
                None
                if rebuilding is None
                else TrailingReader(
                    PostgresEventReader(rebuilding.pool), store, rebuilding.live_group
                )
            ),
            subscriber_group=group,
            subscription_requests=requests,
            processor=processor,
            batch_size=(
                batch_size if rebuilding is None else projection.rebuild_batch_size
            ),
            catch_up_batch_size=catch_up_batch_size if rebuilding is None else None,
            subscriber_id=subscriber,
            node_id=node,
            claim_lease=claim_lease,
            on_poison=on_poison,
            poison_attempts=poison_attempts,
            poison_order=poison_order,
            batch_timeout=batch_timeout,
            # A rebuild's sources overlap one another already.
            read_ahead=read_ahead and rebuilding is None,
            concurrent_batches=(
                concurrent_batches if rebuilding is None else REBUILD_CONCURRENT_BATCHES
            ),
            metrics=metrics,
        )

    return VersionedConsumer(
        projection=projection,
        catalog=ProjectionCatalog(checkpoint_store.pool),
        id=subscriber,
        subscription_requests=requests,
        make_consumer=make_consumer,
        refresh_interval=refresh_interval,
        swap_timeout=swap_timeout,
        metrics=metrics,
    )
