"""A test application with no idempotency of its own: one row per event, no key.

Its processor inserts one row per event into ``plain_rows`` (no unique key), through
the transaction in which the transactional consumer moves the checkpoint; each
batch then waits ``BATCH_PAUSE_SECONDS`` in that transaction, so that a signal sent
while a batch runs lands mid-batch. It logs ``plain.batch-started`` as a batch
begins. The table is the application's migration (``run --migrate``).

    eventcomposition run --app tests.component.apps.plain_insert:PlainInsertApp
"""

from collections.abc import Sequence

import structlog
from dependency_injector import providers
from logicblocks.event.types import CategoryIdentifier, StoredEvent

from eventcomposition.consumers import BatchProcessor, Transaction
from eventcomposition.containers import EventRuntimeContainer
from eventcomposition.runtime import SubscriptionConsumerRegistration
from eventcomposition.schema import Migration

GROUP = "plain-insert"
CATEGORIES = [f"plain-{n}" for n in range(6)]
BATCH_PAUSE_SECONDS = 0.2
CREATE_ROWS = """
    CREATE TABLE plain_rows (
        event_id text NOT NULL,
        category text NOT NULL,
        sequence_number bigint NOT NULL
    )
"""
INSERT_ROW = (
    "INSERT INTO plain_rows (event_id, category, sequence_number) VALUES (%s, %s, %s)"
)

logger = structlog.get_logger("plain-insert")


class PlainInsertProcessor(BatchProcessor):
    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        await logger.ainfo(
            "plain.batch-started",
            category=events[0].category,
            first_sequence_number=events[0].sequence_number,
            last_sequence_number=events[-1].sequence_number,
        )
        connection = transaction.connection
        async with connection.cursor() as cursor:
            await cursor.executemany(
                INSERT_ROW,
                [(event.id, event.category, event.sequence_number) for event in events],
            )
        await connection.execute("SELECT pg_sleep(%s)", [BATCH_PAUSE_SECONDS])


class PlainInsertApp(EventRuntimeContainer):
    migrations = providers.List(
        providers.Object(Migration(name="plain-rows", apply=CREATE_ROWS))
    )
    consumers = providers.List(
        providers.Factory(
            SubscriptionConsumerRegistration,
            consumer=providers.Factory(
                EventRuntimeContainer.transactional_consumer,
                subscriber_group=GROUP,
                subscription_requests=[
                    CategoryIdentifier(category=category) for category in CATEGORIES
                ],
                processor=providers.Factory(PlainInsertProcessor),
            ),
        )
    )
