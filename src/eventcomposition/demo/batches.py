"""The sample application's batch processors: a batch of orders, one write.

A transactional consumer hands each batch of one category to the processor with
the transaction in which its checkpoint moves, so the processor keeps no
idempotency of its own: a batch that rolls back changes nothing, a committed one is
never delivered again. The processor adds the batch up per customer, then writes
the totals once:

- ``PostgresCustomerTotals``: one ``INSERT ... ON CONFLICT DO UPDATE`` over the
  batch's customers into the ``projections`` table, through the transaction's
  connection.
- ``InMemoryCustomerTotals``: into a ``ProjectionStore`` once the batch commits
  (``Transaction.on_commit``).

Both keep the projection's shape (``read_totals`` reads it) and count what they
applied and rejected, once committed.
"""

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from logicblocks.event.projection import ProjectionStore
from logicblocks.event.types import (
    JsonValue,
    JsonValueType,
    Projection,
    StoredEvent,
    StreamIdentifier,
)

from ..consumers import BatchProcessor, Transaction
from .orders import ORDER_PLACED
from .processor import MalformedOrderError, amount_of
from .totals import CustomerTotals

logger = structlog.get_logger("eventcomposition.demo")


@dataclass(frozen=True)
class CustomerChange:
    """What one batch adds to one customer's totals."""

    category: str
    customer_id: str
    totals: CustomerTotals


@dataclass(frozen=True)
class Rejection:
    event: StoredEvent
    reason: str


class CustomerTotalsBatchProcessor(BatchProcessor):
    """Adds a batch of order-placed events to their customers' totals.

    Each committed batch is logged at DEBUG (``demo.batch-applied``: its category,
    its first event's stream, which tells its partition, and how many orders it
    applied and rejected). A malformed event is logged once its
    batch commits (one error line with its
    category, stream, position, sequence number and the reason, never the
    payload), counted and skipped; its customer still gets (possibly zero)
    totals. Events of other names are ignored.

    ``applied`` and ``malformed`` count the events of this processor's committed
    batches.
    """

    def __init__(self, projection_name: str) -> None:
        self.projection_name = projection_name
        self.applied = 0
        self.malformed = 0

    @property
    def processed(self) -> int:
        """Events committed: applied or rejected as malformed."""
        return self.applied + self.malformed

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        changes: dict[str, CustomerChange] = {}
        applied = 0
        rejections: list[Rejection] = []
        for event in events:
            if event.name != ORDER_PLACED:
                continue
            change = changes.get(event.stream) or CustomerChange(
                event.category, event.stream, CustomerTotals()
            )
            try:
                amount = amount_of(event.payload)
            except MalformedOrderError as error:
                rejections.append(Rejection(event, str(error)))
            else:
                change = CustomerChange(
                    change.category, change.customer_id, change.totals.add(amount)
                )
                applied += 1
            changes[event.stream] = change
        if changes:
            await self.write(list(changes.values()), transaction)

        def committed() -> None:
            self.applied += applied
            self.malformed += len(rejections)
            for rejection in rejections:
                _log_rejection(rejection)
            logger.debug(
                "demo.batch-applied",
                category=events[0].category,
                first_stream=events[0].stream,
                orders=applied + len(rejections),
                applied=applied,
                malformed=len(rejections),
                last_sequence_number=events[-1].sequence_number,
            )

        transaction.on_commit(committed)

    @abstractmethod
    async def write(
        self, changes: Sequence[CustomerChange], transaction: Transaction
    ) -> None:
        """Add ``changes`` to the stored totals, within ``transaction``."""
        raise NotImplementedError


def _log_rejection(rejection: Rejection) -> None:
    event = rejection.event
    logger.error(
        "demo.order-rejected",
        category=event.category,
        stream=event.stream,
        position=event.position,
        sequence_number=event.sequence_number,
        event_id=event.id,
        reason=rejection.reason,
    )


UPSERT_TOTALS = """
    INSERT INTO projections (id, name, source, state, metadata)
    SELECT
        change.customer_id,
        %(name)s,
        jsonb_build_object(
            'type', 'stream', 'category', change.category,
            'stream', change.customer_id
        ),
        jsonb_build_object(
            'order_count', change.order_count,
            'total_amount_cents', change.amount_cents
        ),
        '{}'::jsonb
    FROM unnest(
        %(customers)s::text[], %(categories)s::text[],
        %(counts)s::bigint[], %(amounts)s::bigint[]
    ) AS change(customer_id, category, order_count, amount_cents)
    ON CONFLICT (name, id) DO UPDATE SET state = jsonb_build_object(
        'order_count',
        (projections.state->>'order_count')::bigint
            + (excluded.state->>'order_count')::bigint,
        'total_amount_cents',
        (projections.state->>'total_amount_cents')::bigint
            + (excluded.state->>'total_amount_cents')::bigint
    )
"""


class PostgresCustomerTotals(CustomerTotalsBatchProcessor):
    """Writes a batch's totals with one statement through the transaction."""

    async def write(
        self, changes: Sequence[CustomerChange], transaction: Transaction
    ) -> None:
        await transaction.connection.execute(
            UPSERT_TOTALS,
            {
                "name": self.projection_name,
                "customers": [change.customer_id for change in changes],
                "categories": [change.category for change in changes],
                "counts": [change.totals.order_count for change in changes],
                "amounts": [change.totals.total_amount_cents for change in changes],
            },
        )


class InMemoryCustomerTotals(CustomerTotalsBatchProcessor):
    """Adds a batch's totals to ``projection_store`` once the batch commits."""

    def __init__(self, projection_store: ProjectionStore, projection_name: str) -> None:
        super().__init__(projection_name)
        self._projection_store = projection_store

    async def write(
        self, changes: Sequence[CustomerChange], transaction: Transaction
    ) -> None:
        async def add() -> None:
            for change in changes:
                await self._add(change)

        transaction.on_commit(add)

    async def _add(self, change: CustomerChange) -> None:
        current = await self._projection_store.load(
            id=change.customer_id,
            name=self.projection_name,
            state_type=CustomerTotals,
            metadata_type=JsonValueType,
        )
        totals = current.state if current is not None else CustomerTotals()
        await self._projection_store.save(
            projection=Projection[CustomerTotals, JsonValue](
                id=change.customer_id,
                name=self.projection_name,
                source=StreamIdentifier(
                    category=change.category, stream=change.customer_id
                ),
                state=CustomerTotals(
                    order_count=totals.order_count + change.totals.order_count,
                    total_amount_cents=totals.total_amount_cents
                    + change.totals.total_amount_cents,
                ),
                metadata={},
            )
        )
