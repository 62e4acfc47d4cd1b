"""A small application that component tests run in node processes (``--app``).

One transactional consumer (group ``ledger``, category ``payments``) writes one
ledger row per event, in the batch's transaction. A switch row makes it fail, as
an outage of what it writes to would: every batch then raises ``ConnectionError``
(transient for the consumer: retried, never parked) until the switch is turned
back, so a test can make a running node's consumer fail and recover.

The tables come with the application's migration (``run --migrate``).
"""

from collections.abc import Sequence

from dependency_injector import providers
from logicblocks.event.types import CategoryIdentifier, StoredEvent

from eventcomposition.consumers import BatchProcessor, Transaction
from eventcomposition.containers import EventRuntimeContainer
from eventcomposition.runtime import SubscriptionConsumerRegistration
from eventcomposition.schema import Migration

GROUP = "ledger"
CATEGORY = "payments"

LEDGER_TABLES = Migration(
    "ledger-tables",
    """
    CREATE TABLE ledger (event_id text PRIMARY KEY, amount bigint NOT NULL);
    CREATE TABLE ledger_switch (failing boolean NOT NULL);
    INSERT INTO ledger_switch VALUES (false);
    """,
)
SET_FAILING = "UPDATE ledger_switch SET failing = %s"


class SwitchedLedger(BatchProcessor):
    """Writes a ledger row per event, unless the switch says the ledger fails."""

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        cursor = await transaction.connection.execute(
            "SELECT failing FROM ledger_switch"
        )
        row = await cursor.fetchone()
        if row is not None and row[0]:
            raise ConnectionError("the ledger is switched off")
        for event in events:
            amount = (
                event.payload.get("amount") if isinstance(event.payload, dict) else 0
            )
            await transaction.connection.execute(
                "INSERT INTO ledger (event_id, amount) VALUES (%s, %s)",
                (event.id, amount if isinstance(amount, int) else 0),
            )


class LedgerApp(EventRuntimeContainer):
    consumers = providers.List(
        providers.Factory(
            SubscriptionConsumerRegistration,
            consumer=providers.Factory(
                EventRuntimeContainer.transactional_consumer,
                subscriber_group=GROUP,
                subscription_requests=[CategoryIdentifier(category=CATEGORY)],
                processor=providers.Factory(SwitchedLedger),
            ),
        )
    )
    migrations = providers.List(providers.Object(LEDGER_TABLES))
