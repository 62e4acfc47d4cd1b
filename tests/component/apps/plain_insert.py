"""A test application with no idempotency of its own: one row per event, no key.

It reads the one ``plain`` category in as many partitions as the settings give its
group (``consumers.partitions``, 16 by default). Its processor inserts one row per
event into ``plain_rows`` (no unique key; ``row_id`` records the insertion order),
through the transaction in which the transactional consumer moves the checkpoint;
each batch then waits ``BATCH_PAUSE_SECONDS`` in that transaction, so that a signal
sent while a batch runs lands mid-batch. It logs ``plain.batch-started`` as a batch
begins, with its first event's stream (which tells its partition). The table is the
application's migration (``run --migrate``).

    eventcomposition run --app tests.component.apps.plain_insert:PlainInsertApp
"""

from collections.abc import Sequence

import structlog
from dependency_injector import providers
from logicblocks.event.types import StoredEvent

from eventcomposition.consumers import BatchProcessor, Transaction
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


class PlainInsertProcessor(BatchProcessor):
    def __init__(self, node_id: str) -> None:
        self._node_id = node_id

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        await logger.ainfo(
            "plain.batch-started",
            category=events[0].category,
            first_stream=events[0].stream,
            first_sequence_number=events[0].sequence_number,
            last_sequence_number=events[-1].sequence_number,
        )
        connection = transaction.connection
        async with connection.cursor() as cursor:
            await cursor.executemany(
                INSERT_ROW,
                [
                    (e.id, e.stream, e.position, e.sequence_number, self._node_id)
                    for e in events
                ],
            )
        await connection.execute("SELECT pg_sleep(%s)", [BATCH_PAUSE_SECONDS])


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
                    PlainInsertProcessor, EventRuntimeContainer.node_id
                ),
            ),
        )
    )
