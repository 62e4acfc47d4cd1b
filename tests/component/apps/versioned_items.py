"""A versioned projection that component tests run in node processes (``--app``).

Group ``items`` over four categories: one row per event in ``items`` (no key, so a
repeat would show), holding the event's ``n`` times a factor that changes with the
version (1 for version 1, 10 from version 2 on). Its table is the projection's own
migration, applied in each version's schema; readers read ``items.items``.

    eventcomposition run --app tests.component.apps.versioned_items:VersionedItemsApp
"""

from collections.abc import Sequence

from dependency_injector import providers
from logicblocks.event.types import CategoryIdentifier, StoredEvent

from eventcomposition.consumers import BatchProcessor, Transaction
from eventcomposition.containers import EventRuntimeContainer
from eventcomposition.projections import VersionedProjection
from eventcomposition.runtime import SubscriptionConsumerRegistration
from eventcomposition.schema import Migration

GROUP = "items"
CATEGORIES = [f"items-{n}" for n in range(4)]
ITEMS = Migration(
    "items",
    "CREATE TABLE items (event_id text NOT NULL, category text NOT NULL, "
    "seq bigint NOT NULL, n bigint NOT NULL, value bigint NOT NULL, "
    "rebuilding boolean NOT NULL)",
)


class Items(BatchProcessor):
    def __init__(self, factor: int) -> None:
        self.factor = factor

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        rows = []
        for event in events:
            n = event.payload.get("n", 0) if isinstance(event.payload, dict) else 0
            n = n if isinstance(n, int) else 0
            rows.append(
                (
                    event.id,
                    event.category,
                    event.sequence_number,
                    n,
                    n * self.factor,
                    transaction.rebuilding,
                )
            )
        async with transaction.connection.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO items (event_id, category, seq, n, value, rebuilding) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                rows,
            )


def processor_for(version: int) -> BatchProcessor:
    return Items(1 if version == 1 else 10)


PROJECTION = VersionedProjection(
    group=GROUP,
    processor_for=processor_for,
    migrations=[ITEMS],
    rebuild_batch_size=200,
)


class VersionedItemsApp(EventRuntimeContainer):
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
