"""A plain-insert application for the rebalancing tests: ``--app
rebalance_ledger:LedgerContainer`` (run with this folder as the working directory).

One transactional consumer over ``SOURCES`` categories writes one row per event into
``rebalance_applied``, in the batch's transaction: the event, the node that applied
it and the epoch of the claim it committed under. The test creates the table.
"""

from collections.abc import Sequence

from dependency_injector import providers
from logicblocks.event.types import CategoryIdentifier, StoredEvent

from eventcomposition.consumers import BatchProcessor, Transaction
from eventcomposition.containers import EventRuntimeContainer
from eventcomposition.runtime import SubscriptionConsumerRegistration

GROUP = "ledger"
SOURCES = [f"ledger-{number:02d}" for number in range(12)]

# The claim this transaction's checkpoint write is fenced by: had another subscriber
# claimed the source since, the write fails and this row rolls back with the batch.
_RECORD = """
    INSERT INTO rebalance_applied (event_id, source, sequence_number, node_id, epoch)
    SELECT %(event_id)s, %(source)s, %(sequence_number)s, %(node_id)s, c.epoch
    FROM consumer_claims c WHERE c."group" = %(group)s AND c.source = %(source)s
"""


class RecordingProcessor(BatchProcessor):
    def __init__(self, node_id: str) -> None:
        self._node_id = node_id

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        for event in events:
            cursor = await transaction.connection.execute(
                _RECORD,
                {
                    "event_id": event.id,
                    "source": event.category,
                    "sequence_number": event.sequence_number,
                    "node_id": self._node_id,
                    "group": GROUP,
                },
            )
            if cursor.rowcount != 1:
                raise RuntimeError(f"no claim of {event.category} to record under")


class LedgerContainer(EventRuntimeContainer):
    consumers = providers.List(
        providers.Factory(
            SubscriptionConsumerRegistration,
            consumer=providers.Factory(
                EventRuntimeContainer.transactional_consumer,
                subscriber_group=GROUP,
                subscription_requests=[
                    CategoryIdentifier(category=source) for source in SOURCES
                ],
                processor=providers.Factory(
                    RecordingProcessor, EventRuntimeContainer.node_id
                ),
            ),
        )
    )
