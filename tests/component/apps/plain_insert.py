"""A test application with no idempotency of its own: one row per event, no key.

Its per-event handler inserts one row per event into ``plain_rows`` (no unique key),
through the transaction in which the transactional consumer moves the checkpoint;
each batch then waits ``BATCH_PAUSE_SECONDS`` in that transaction (the handler's
``batch_state`` writer), so that a signal sent while a batch runs lands mid-batch.
It logs ``plain.batch-started`` at a batch's first event. The table is the
application's migration (``run --migrate``).

    eventcomposition run --app tests.component.apps.plain_insert:PlainInsertApp
"""

import structlog
from dependency_injector import providers
from logicblocks.event.types import CategoryIdentifier, StoredEvent

from eventcomposition.consumers import EventHandler, Transaction
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


class PlainInsertHandler(EventHandler):
    async def process_event(self, event: StoredEvent, transaction: Transaction) -> None:
        applied = transaction.batch_state(self, list[int], self._pause)
        if not applied:
            await logger.ainfo(
                "plain.batch-started",
                category=event.category,
                first_sequence_number=event.sequence_number,
            )
        applied.append(event.sequence_number)
        await transaction.connection.execute(
            INSERT_ROW, (event.id, event.category, event.sequence_number)
        )

    async def _pause(self, applied: list[int], transaction: Transaction) -> None:
        await transaction.connection.execute(
            "SELECT pg_sleep(%s)", [BATCH_PAUSE_SECONDS]
        )


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
                processor=providers.Factory(PlainInsertHandler),
            ),
        )
    )
