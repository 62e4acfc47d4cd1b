"""The sample projection event by event, idempotently: for subscription consumers.

The demo application itself uses the batch processors of ``batches`` with a
transactional consumer; this per-event processor is the at-least-once path, kept for
the throughput benchmark's per-event figure and the runtime's tests. ``amount_of``
serves both.
"""

import structlog
from logicblocks.event.processing import EventProcessor
from logicblocks.event.projection import ProjectionStore
from logicblocks.event.types import JsonValue, Projection, StoredEvent, StreamIdentifier

from .orders import ORDER_PLACED
from .totals import AppliedPosition, CustomerTotals

logger = structlog.get_logger("eventcomposition.demo")


class MalformedOrderError(ValueError):
    """An order-placed event whose payload the projection cannot use."""


def amount_of(payload: JsonValue) -> int:
    """The order's amount in cents; raises ``MalformedOrderError`` saying why not."""
    if not isinstance(payload, dict):
        raise MalformedOrderError("payload is not an object")
    if "amount_cents" not in payload:
        raise MalformedOrderError("amount_cents is missing")
    amount = payload["amount_cents"]
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise MalformedOrderError(
            f"amount_cents is not an integer (got {type(amount).__name__})"
        )
    if amount < 0:
        raise MalformedOrderError("amount_cents is negative")
    return amount


class CustomerTotalsProcessor(EventProcessor[StoredEvent]):
    """Adds each order-placed event to its customer's totals in a projection store.

    Idempotent: delivery is at least once (a node killed mid-batch replays events),
    so each projection records the stream position of the last event it applied
    and events at or below it are skipped. That is sound because a customer's
    events form one stream, which lives in one category, consumed by one consumer
    at a time.

    A malformed event is logged (one error line with its category, stream,
    position, sequence number and the reason, never the payload), counted and
    skipped: it does not raise, so the node keeps going. Its position is recorded
    too, so a replay neither logs nor counts it twice.

    The counters (``applied``, ``malformed``, ``replayed``) count this
    processor's work since it was created; a stored projection changes only once
    per event however often the event is delivered.
    """

    def __init__(self, projection_store: ProjectionStore, projection_name: str) -> None:
        self._projection_store = projection_store
        self.projection_name = projection_name
        self.applied = 0
        self.malformed = 0
        self.replayed = 0

    @property
    def processed(self) -> int:
        """Events handled for the first time: applied or rejected as malformed."""
        return self.applied + self.malformed

    async def process_event(self, event: StoredEvent) -> None:
        if event.name != ORDER_PLACED:
            return
        current = await self._projection_store.load(
            id=event.stream,
            name=self.projection_name,
            state_type=CustomerTotals,
            metadata_type=AppliedPosition,
        )
        totals = current.state if current is not None else CustomerTotals()
        applied = current.metadata if current is not None else AppliedPosition()
        if event.position <= applied.position:
            self.replayed += 1
            return
        try:
            amount = amount_of(event.payload)
        except MalformedOrderError as error:
            logger.error(
                "demo.order-rejected",
                category=event.category,
                stream=event.stream,
                position=event.position,
                sequence_number=event.sequence_number,
                event_id=event.id,
                reason=str(error),
            )
            await self._save(event, totals)
            self.malformed += 1
            return
        await self._save(event, totals.add(amount))
        self.applied += 1

    async def _save(self, event: StoredEvent, totals: CustomerTotals) -> None:
        await self._projection_store.save(
            projection=Projection[CustomerTotals, AppliedPosition](
                id=event.stream,
                name=self.projection_name,
                source=StreamIdentifier(category=event.category, stream=event.stream),
                state=totals,
                metadata=AppliedPosition(position=event.position),
            )
        )
