"""The application the rebuild benchmark runs in its observer process (``--app``).

A versioned projection (group ``rebuild-bench``, stable schema ``rebuild_bench``)
over four categories, of plain inserts: one row per event in ``rows``. While
rebuilding, a batch is written in bulk: with ``COPY`` (``projections.bulk.copy_rows``,
the application's opt-in, which ``transaction.rebuilding`` allows), or with one
``INSERT ... SELECT FROM unnest(arrays)`` when ``REBUILD_BENCH_WRITE=unnest``; live
batches with a multi-row insert. Once a live batch has committed, it logs the numbers
(payload ``live``) of its events and the wall-clock time, so the benchmark, which
noted the time just before publishing each, reads publish-to-committed latencies
from the node's log.
"""

import os
import time
from collections.abc import Sequence

import structlog
from dependency_injector import providers
from logicblocks.event.types import CategoryIdentifier, StoredEvent

from eventcomposition.consumers import BatchProcessor, Transaction
from eventcomposition.containers import EventRuntimeContainer
from eventcomposition.projections import VersionedProjection
from eventcomposition.projections.bulk import copy_rows
from eventcomposition.projections.consumer import DEFAULT_REBUILD_BATCH_SIZE
from eventcomposition.runtime import SubscriptionConsumerRegistration
from eventcomposition.schema import Migration

APP = "benchmarks.rebuild_app:RebuildApp"
GROUP = "rebuild-bench"
SCHEMA = "rebuild_bench"
CATEGORIES = [f"bench-{n}" for n in range(4)]
COMMITTED = "rebuild-bench.committed"
REBUILD_BATCH_SIZE = int(
    os.environ.get("REBUILD_BENCH_BATCH_SIZE") or DEFAULT_REBUILD_BATCH_SIZE
)
WRITE = os.environ.get("REBUILD_BENCH_WRITE", "copy")
ROWS = Migration(
    "rows", "CREATE TABLE rows (seq bigint NOT NULL, category text NOT NULL)"
)

logger = structlog.get_logger("benchmarks.rebuild")


class PlainRows(BatchProcessor):
    """One row per event: in bulk while rebuilding, else a multi-row insert that
    logs ``COMMITTED`` with its live events' numbers once committed."""

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        started = time.time()
        if transaction.rebuilding and WRITE == "copy":
            await copy_rows(
                transaction,
                "rows",
                ("seq", "category"),
                [(event.sequence_number, event.category) for event in events],
                types=("int8", "text"),
            )
            return
        async with transaction.connection.cursor() as cursor:
            if transaction.rebuilding:
                await cursor.execute(
                    "INSERT INTO rows (seq, category) "
                    "SELECT * FROM unnest(%s::bigint[], %s::text[])",
                    [
                        [event.sequence_number for event in events],
                        [event.category for event in events],
                    ],
                )
                return
            await cursor.executemany(
                "INSERT INTO rows (seq, category) VALUES (%s, %s)",
                [(event.sequence_number, event.category) for event in events],
            )
        numbers = [
            n
            for event in events
            if isinstance(event.payload, dict)
            and isinstance(n := event.payload.get("live"), int)
        ]

        def committed() -> None:
            logger.info(COMMITTED, numbers=numbers, at=time.time(), started=started)

        if numbers:
            transaction.on_commit(committed)


PROJECTION = VersionedProjection(
    group=GROUP,
    processor_for=lambda version: PlainRows(),
    migrations=[ROWS],
    stable_schema=SCHEMA,
    rebuild_batch_size=REBUILD_BATCH_SIZE,
)


class RebuildApp(EventRuntimeContainer):
    consumers = providers.List(
        providers.Factory(
            SubscriptionConsumerRegistration,
            consumer=providers.Factory(
                EventRuntimeContainer.versioned_consumer,
                projection=PROJECTION,
                subscription_requests=[
                    CategoryIdentifier(category=c) for c in CATEGORIES
                ],
            ),
        )
    )
