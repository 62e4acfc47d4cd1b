"""A test application with no idempotency of its own: one row per event, no key.

It reads the one ``plain`` category in as many partitions as the settings give its
group (``consumers.partitions``, 16 by default). Its per-event handler inserts one
row per event into ``plain_rows`` (no unique key; ``row_id`` records the insertion
order), through the transaction in which the transactional consumer moves the
checkpoint; each batch then waits ``BATCH_PAUSE_SECONDS`` in that transaction (the
handler's ``batch_state`` writer), so that a signal sent while a batch runs lands
mid-batch. It logs ``plain.batch-started`` at a batch's first event, with its
stream (which tells its partition). The table is the
application's migration (``run --migrate``).

    eventcomposition run --app tests.component.apps.plain_insert:PlainInsertApp
"""

import structlog
from dependency_injector import providers
from logicblocks.event.types import StoredEvent

from eventcomposition.consumers import EventHandler, Transaction
from eventcomposition.consumers.partitions import CategoryPartition, partitions_of
from eventcomposition.containers import EventRuntimeContainer
from eventcomposition.runtime import SubscriptionConsumerRegistration
from eventcomposition.schema import Migration
from eventcomposition.settings import EventCompositionSettings

GROUP = "plain-insert"
CATEGORY = "plain"
BATCH_PAUSE_SECONDS = 0.2
CREATE_ROWS = """
    CREATE TABLE plain_rows (
        row_id bigserial,
        event_id text NOT NULL,
        stream text NOT NULL,
        position integer NOT NULL,
        sequence_number bigint NOT NULL,
        node_id text NOT NULL
    )
"""
INSERT_ROW = (
    "INSERT INTO plain_rows (event_id, stream, position, sequence_number, node_id) "
    "VALUES (%s, %s, %s, %s, %s)"
)

logger = structlog.get_logger("plain-insert")


class PlainInsertHandler(EventHandler):
    def __init__(self, node_id: str) -> None:
        self._node_id = node_id

    async def process_event(self, event: StoredEvent, transaction: Transaction) -> None:
        applied = transaction.batch_state(self, list[int], self._pause)
        if not applied:
            await logger.ainfo(
                "plain.batch-started",
                category=event.category,
                first_stream=event.stream,
                first_sequence_number=event.sequence_number,
            )
        applied.append(event.sequence_number)
        await transaction.connection.execute(
            INSERT_ROW,
            (
                event.id,
                event.stream,
                event.position,
                event.sequence_number,
                self._node_id,
            ),
        )

    async def _pause(self, applied: list[int], transaction: Transaction) -> None:
        await transaction.connection.execute(
            "SELECT pg_sleep(%s)", [BATCH_PAUSE_SECONDS]
        )


def partitions(settings: EventCompositionSettings) -> list[CategoryPartition]:
    return partitions_of(CATEGORY, settings.consumers.partition_count(GROUP))


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
                subscription_requests=providers.Callable(
                    partitions, EventRuntimeContainer.settings
                ),
                processor=providers.Factory(
                    PlainInsertHandler, EventRuntimeContainer.node_id
                ),
            ),
        )
    )
